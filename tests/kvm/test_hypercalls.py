"""SMCCC dispatch answers (arch/arm64/kvm/hypercalls.c, pvtime.c), including a hidden PV-time bitmap."""

import struct

import pytest

from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP
from pvtime.cpu.backend import Conduit
from pvtime.kvm import HypercallEvent
from tests.conftest import make_env

NS = smccc.to_u64(smccc.NOT_SUPPORTED)
PV_BASE = 0x090A_0000


@pytest.fixture
def env():
    return make_env(2)


def test_smccc_version_is_1_1(env):
    assert env.call(0, smccc.SMCCC_VERSION) == [0x10001, 0, 0, 0]


def test_arch_features_answers_only_for_pv_time_features(env):
    assert env.call(0, smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)[0] == 0
    for fid in (smccc.PV_TIME_ST, smccc.SMCCC_VERSION, smccc.SMCCC_ARCH_FEATURES, 0xC6000000, smccc.PV_TIME_LPT):
        assert env.call(0, smccc.SMCCC_ARCH_FEATURES, fid) == [NS, 0, 0, 0], hex(fid)


def test_arch_features_truncates_x1_to_u32(env):
    assert env.call(0, smccc.SMCCC_ARCH_FEATURES, 0xFFFF_FFFF_0000_0000 | smccc.PV_TIME_FEATURES)[0] == 0


def test_arch_features_is_0_before_any_ipa_is_set():
    env = make_env(1, pvtime=False)
    assert env.call(0, smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)[0] == 0


def test_pv_time_features_with_an_ipa(env):
    assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES)[0] == 0
    assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)[0] == 0
    assert env.call(0, smccc.PV_TIME_FEATURES, 0xFFFF_FFFF_0000_0000 | smccc.PV_TIME_ST)[0] == 0
    for fid in (smccc.PV_TIME_LPT, smccc.SMCCC_VERSION, 0x1234):
        assert env.call(0, smccc.PV_TIME_FEATURES, fid)[0] == NS


def test_pv_time_features_and_st_without_an_ipa_are_not_supported():
    env = make_env(1, pvtime=False)
    assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES)[0] == NS
    assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)[0] == NS
    assert env.call(0, smccc.PV_TIME_ST) == [NS, 0, 0, 0]


def test_pv_time_st_returns_each_vcpus_ipa_and_zeroes_its_record(env):
    mem = env.machine.pvtime_mem
    mem[0:128] = b"\xAA" * 128
    assert env.call(1, smccc.PV_TIME_ST) == [PV_BASE + 64, 0, 0, 0]
    assert mem[64:128] == bytes(64)  # all 64 bytes, padding included
    assert mem[0:64] == b"\xAA" * 64  # the other vCPU's record is untouched
    assert env.call(0, smccc.PV_TIME_ST)[0] == PV_BASE


def test_pv_time_st_resets_the_baseline_to_run_delay_now(env):
    env.host.hold(env.tasks[0], 5_000)
    with env.host.on_cpu(env.tasks[0], 0):
        pass
    assert env.tasks[0].run_delay_ns == 5_000
    env.call(0, smccc.PV_TIME_ST)
    env.host.hold(env.tasks[0], 700)
    env.load(0)
    # The record counts from run_delay 5 000, not from the thread's start.
    assert struct.unpack_from("<Q", env.machine.pvtime_mem, 8)[0] == 700


def test_unknown_ids_answer_minus_one_and_zero_x1_to_x3(env):
    for fid in (0xC5000023, 0x86000000, 0x8400_00FF, 0x0000_0000, 0xBF00_0000):
        assert env.call(0, fid, 1, 2, 3) == [NS, 0, 0, 0], hex(fid)


def test_32_bit_aliases_of_pv_time_are_not_supported(env):
    for fid in (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST, smccc.PV_TIME_LPT):
        alias = fid & ~(1 << 30)
        assert env.call(0, alias, smccc.PV_TIME_ST) == [NS, 0, 0, 0], hex(alias)


def test_function_id_is_the_low_32_bits_of_x0(env):
    assert env.call(0, 0xDEAD_BEEF_0000_0000 | smccc.SMCCC_VERSION)[0] == 0x10001


def test_hvc_immediate_is_ignored(env):
    assert env.call(0, smccc.SMCCC_VERSION, imm=0x1234)[0] == 0x10001


def test_smc_0_is_dispatched_like_hvc(env):
    assert env.call(0, smccc.PV_TIME_ST, conduit=Conduit.SMC)[0] == PV_BASE


def test_smc_with_non_zero_immediate_answers_all_ones_and_keeps_x1_to_x3(env):
    assert env.call(0, smccc.SMCCC_VERSION, 7, 8, 9, conduit=Conduit.SMC, imm=1) == [2**64 - 1, 7, 8, 9]


class TestBitmapHidesPvTime:
    """KVM_REG_ARM_STD_HYP_BMAP bit 0 clear: PV-time calls answer as unknown ids."""

    @pytest.fixture
    def env(self):
        env = make_env(1)
        env.vcpu(0).set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
        return env

    def test_arch_features_hides_pv_time_features(self, env):
        assert env.call(0, smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)[0] == NS

    def test_pv_time_calls_answer_not_supported_with_no_side_effect(self, env):
        env.machine.pvtime_mem[8:16] = struct.pack("<Q", 1234)
        assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST) == [NS, 0, 0, 0]
        assert env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES) == [NS, 0, 0, 0]
        assert env.call(0, smccc.PV_TIME_ST) == [NS, 0, 0, 0]
        assert env.machine.pvtime_mem[8:16] == struct.pack("<Q", 1234)  # PV_TIME_ST did not zero it

    def test_version_still_answers(self, env):
        assert env.call(0, smccc.SMCCC_VERSION)[0] == 0x10001

    def test_the_record_is_still_updated_at_vcpu_load(self, env):
        # Linux records steal whenever an IPA is set, whatever the bitmap says.
        env.load(0)
        env.host.hold(env.tasks[0], 7_000)
        env.load(0)
        assert struct.unpack_from("<Q", env.machine.pvtime_mem, 8)[0] == 7_000


def test_psci_features_reports_smccc_version(env):
    assert env.call(0, smccc.PSCI_FEATURES, smccc.SMCCC_VERSION)[0] == 0
    assert env.call(0, smccc.PSCI_VERSION)[0] == 0x10001


def test_tracepoint_sees_every_call_with_its_arguments_and_answer(env):
    seen: list[HypercallEvent] = []
    env.vm.subscribe_hypercalls(seen.append)
    env.call(1, smccc.PV_TIME_ST, 7)
    env.call(0, 0xDEAD_0000_0000_0000 | smccc.SMCCC_VERSION, 1, 2, 3, conduit=Conduit.SMC, imm=3)
    assert seen == [
        HypercallEvent(1, smccc.PV_TIME_ST, (smccc.PV_TIME_ST, 7, 0, 0), (PV_BASE + 64, 0, 0, 0), baseline_reset=True),
        # SMC with a non-zero immediate: ~0 in x0, x1..x3 untouched, nothing served
        HypercallEvent(0, smccc.SMCCC_VERSION, (0xDEAD_0000_0000_0000 | smccc.SMCCC_VERSION, 1, 2, 3),
                       (2**64 - 1, 1, 2, 3), baseline_reset=False),
    ]
    assert env.vcpu(0).stats.hypercalls == 1 and env.vcpu(1).stats.hypercalls == 1


def test_every_observer_sees_pv_time_st_reset_the_steal_baseline(env):
    """kvm_smccc_call_handler -> kvm_init_stolen_time: a served PV_TIME_ST zeroes the record and
    moves last_steal; each subscribed observer is told so."""
    first: list[HypercallEvent] = []
    second: list[HypercallEvent] = []
    env.vm.subscribe_hypercalls(first.append)
    env.vm.subscribe_hypercalls(second.append)
    env.call(0, smccc.PV_TIME_ST)
    assert first == second and len(first) == 1
    event = first[0]
    assert event.vcpu_id == 0 and event.function_id == smccc.PV_TIME_ST and event.baseline_reset
    assert event.results == (PV_BASE, 0, 0, 0)


def test_pv_time_st_that_is_not_served_does_not_reset_the_baseline():
    env = make_env(1, pvtime=False)  # no stolen-time IPA: PV_TIME_ST answers NOT_SUPPORTED
    seen: list[HypercallEvent] = []
    env.vm.subscribe_hypercalls(seen.append)
    env.call(0, smccc.PV_TIME_ST)
    env.call(0, smccc.PV_TIME_ST, conduit=Conduit.SMC, imm=1)
    assert [(e.results[0], e.baseline_reset) for e in seen] == [(NS, False), (NS, False)]


def test_an_unsubscribed_observer_sees_nothing_more(env):
    seen: list[HypercallEvent] = []
    env.vm.subscribe_hypercalls(seen.append)
    env.call(0, smccc.SMCCC_VERSION)
    env.vm.unsubscribe_hypercalls(seen.append)
    env.call(0, smccc.SMCCC_VERSION)
    assert len(seen) == 1


def test_subscribing_twice_or_unsubscribing_a_stranger_is_refused(env):
    def observer(event: HypercallEvent) -> None:
        pass

    env.vm.subscribe_hypercalls(observer)
    with pytest.raises(ValueError, match="already subscribed"):
        env.vm.subscribe_hypercalls(observer)
    env.vm.unsubscribe_hypercalls(observer)
    with pytest.raises(ValueError, match="not subscribed"):
        env.vm.unsubscribe_hypercalls(observer)
