"""Linux tools/testing/selftests/kvm/steal_time.c (aarch64), replayed on a model guest.

probe; PV_TIME_ST == the IPA; revision == attributes == 0; steal <= run_delay; then a forced wait
of >= MIN_RUN_DELAY_NS (200 us) on the vCPU's CPU, after which the guest's delta is >= the wait.
"""

import struct

from pvtime.abi import smccc
from pvtime.guest.machine import MmioWrite
from pvtime.kvm import MmioExit
from tests.conftest import make_env

MIN_RUN_DELAY_NS = 200_000
UCALL = 0x0A00_0000  # an unbacked address: stores to it exit to the VMM, as selftests' ucall


class SelftestGuest:
    def __init__(self):
        self.st_ipa: dict[int, int] = {}
        self.stolen: dict[int, list[int]] = {}
        self.failures: list[str] = []

    def check(self, cond, what):
        if not cond:
            self.failures.append(what)

    def main(self, cpu, index):
        ns = smccc.to_u64(smccc.NOT_SUPPORTED)
        self.check(cpu.hvc(smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)[0] == 0, "ARCH_FEATURES")
        self.check(cpu.hvc(smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES)[0] == 0, "FEATURES(FEATURES)")
        self.check(cpu.hvc(smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)[0] == 0, "FEATURES(ST)")
        ipa = cpu.hvc(smccc.PV_TIME_ST)[0]
        self.check(ipa != ns, "PV_TIME_ST")
        self.st_ipa[index] = ipa
        yield MmioWrite(UCALL, b"\0")  # GUEST_SYNC(0)
        rev, attr = struct.unpack("<II", cpu.read(ipa, 8))
        self.check(rev == 0 and attr == 0, "revision/attributes")
        self.stolen.setdefault(index, []).append(cpu.load64(ipa + 8))
        yield MmioWrite(UCALL, b"\1")  # GUEST_SYNC(1)
        self.stolen[index].append(cpu.load64(ipa + 8))
        yield MmioWrite(UCALL, b"\2")  # GUEST_DONE

    def irq(self, cpu, index):
        pass


def run_to_sync(env, i):
    with env.host.on_cpu(env.tasks[i], 10**9):
        ex = env.vcpu(i).run()
    assert isinstance(ex, MmioExit) and ex.is_write and ex.phys_addr == UCALL
    return ex.data[0]


def test_steal_time_selftest_sequence():
    env = make_env(4)
    guest = SelftestGuest()
    env.machine.load_model_guest(guest)
    for i in range(4):
        # Some steal before the guest asks for it: PV_TIME_ST starts counting from then.
        env.host.hold(env.tasks[i], 1_000 * (i + 1))
        assert run_to_sync(env, i) == 0
        assert guest.st_ipa[i] == env.machine.config.layout.steal_record(i)
        run_delay = env.tasks[i].run_delay_ns
        assert run_to_sync(env, i) == 1
        assert guest.stolen[i][0] <= run_delay
        # Steal from the vCPU: its thread waits while another thread has its CPU.
        before = env.tasks[i].run_delay_ns
        env.host.hold(env.tasks[i], MIN_RUN_DELAY_NS)
        assert run_to_sync(env, i) == 2
        run_delay = env.tasks[i].run_delay_ns - before
        assert run_delay >= MIN_RUN_DELAY_NS
        assert guest.stolen[i][1] - guest.stolen[i][0] >= run_delay
    assert guest.failures == []
