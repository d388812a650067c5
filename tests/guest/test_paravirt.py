"""The Linux arm64 stolen-time client (arch/arm64/kernel/paravirt.c) against the pvtime host."""

import struct

from pvtime.abi import smccc
from pvtime.abi.errno import EINVAL, ENXIO
from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP
from pvtime.guest.paravirt import PvSteal, has_pv_steal_clock
from tests.conftest import RecordingCpu, make_env


class RecordReadAs:
    """A vCPU whose memory reads show byte `offset` of every read as 1 (a corrupt record)."""

    def __init__(self, cpu, offset):
        self._cpu, self._offset = cpu, offset

    def __getattr__(self, name):
        return getattr(self._cpu, name)

    def read(self, addr, size):
        data = bytearray(self._cpu.read(addr, size))
        data[self._offset] = 1
        return bytes(data)


def guest(env, i=0):
    """Run the decorated function as vCPU i's guest code, in one KVM_RUN (at once)."""
    return lambda code: env.guest(i, code)


def test_probe_order_is_linuxs():
    env = make_env(1)
    cpu = RecordingCpu(env, 0)
    @guest(env)
    def _():
        assert has_pv_steal_clock(cpu)
    # psci_init_smccc (PSCI_FEATURES(SMCCC_VERSION), SMCCC_VERSION), then has_pv_steal_clock.
    assert cpu.calls == [smccc.PSCI_FEATURES, smccc.SMCCC_VERSION, smccc.SMCCC_ARCH_FEATURES,
                         smccc.PV_TIME_FEATURES]


def test_probe_fails_without_an_ipa_and_stops_at_pv_time_features():
    env = make_env(1, pvtime=False)
    cpu = RecordingCpu(env, 0)
    @guest(env)
    def _():
        assert not has_pv_steal_clock(cpu)
    assert cpu.calls[-1] == smccc.PV_TIME_FEATURES


def test_probe_fails_at_arch_features_when_the_bitmap_hides_pv_time():
    env = make_env(1)
    env.vcpu(0).set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
    cpu = RecordingCpu(env, 0)
    @guest(env)
    def _():
        assert not has_pv_steal_clock(cpu)
    assert cpu.calls[-1] == smccc.SMCCC_ARCH_FEATURES  # PV_TIME_FEATURES is never called


def test_online_maps_the_record_and_the_clock_reads_stolen_time():
    env = make_env(2)
    pv = PvSteal()
    cpu = RecordingCpu(env, 1)
    @guest(env, 1)
    def _():
        assert pv.init(cpu, 1)  # pv_time_init on boot CPU 1 brings its region online
        assert pv.regions[1] == 0x090A_0000 + 64
        env.machine.pvtime_mem[72:80] = struct.pack("<Q", 123_456)
        assert pv.steal_clock(cpu, 1) == 123_456
        assert pv.steal_clock(cpu, 0) == 0  # CPU 0 never came online: unmapped reads 0


def test_online_fails_with_einval_when_pv_time_st_is_not_supported():
    env = make_env(1, pvtime=False)
    pv = PvSteal()
    @guest(env)
    def _():
        assert pv.cpu_online(RecordingCpu(env, 0), 0) == -EINVAL
    assert 0 not in pv.regions


def test_bad_revision_fails_with_enxio_and_the_mapping_stays_published():
    env = make_env(1)
    pv = PvSteal()
    cpu = RecordingCpu(env, 0)

    @guest(env)
    def _():
        assert pv.cpu_online(RecordReadAs(cpu, 0), 0) == -ENXIO  # revision 1
    assert 0 in pv.regions  # Linux publishes kaddr before checking
    assert any("Unexpected revision" in m for m in pv.messages)


def test_offline_unmaps_and_re_online_zeroes_the_host_value():
    env = make_env(1)
    pv = PvSteal()
    cpu = RecordingCpu(env, 0)
    @guest(env)
    def _():
        assert pv.init(cpu)
    env.host.hold(env.tasks[0], 50_000)
    @guest(env)
    def _():
        assert pv.steal_clock(cpu, 0) == 50_000  # KVM_RUN's vcpu_load updated the record
        pv.cpu_offline(0)
        assert pv.steal_clock(cpu, 0) == 0
        assert pv.cpu_online(cpu, 0) == 0  # PV_TIME_ST again
        assert pv.steal_clock(cpu, 0) == 0  # ...which zeroed the host value


def test_steal_clock_is_zero_before_pv_time_init():
    env = make_env(1)
    pv = PvSteal()
    pv.regions[0] = 0x090A_0000
    @guest(env)
    def _():
        assert pv.steal_clock(RecordingCpu(env, 0), 0) == 0  # native_steal_clock


def test_a_failed_boot_cpu_online_fails_pv_time_init():
    # Linux pv_time_init: stolen_time_init's online callback fails on the boot CPU, so
    # para_steal_clock is never installed and the steal clock stays native (0).
    env = make_env(1)
    pv = PvSteal()
    cpu = RecordingCpu(env, 0)

    @guest(env)
    def _():
        assert not pv.init(RecordReadAs(cpu, 4))  # attributes 1
        assert pv.boot_error == -ENXIO and not pv.enabled
        env.machine.pvtime_mem[8:16] = struct.pack("<Q", 999)
        assert pv.steal_clock(cpu, 0) == 0
    assert not any("using stolen time" in m for m in pv.messages)


def test_smccc_version_is_compared_as_a_u32_like_linux():
    from pvtime.guest.paravirt import smccc_version

    class Firmware:
        def __init__(self, answer):
            self.answer = answer

        def hvc(self, x0, *args, **kw):
            return (0 if x0 == smccc.PSCI_FEATURES else self.answer, 0, 0, 0)

    assert smccc_version(Firmware(0x10001)) == 0x10001
    assert smccc_version(Firmware(0x10000)) == 0x10000
    assert smccc_version(Firmware(2**64 - 1)) == 0xFFFF_FFFF  # -1 as a u32 is >= 1.1 in Linux
