"""PSCI as KVM answers it (arch/arm64/kvm/psci.c: kvm_psci_0_2_call, kvm_psci_1_x_call)."""

import pytest

from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN
from pvtime.cpu.backend import Stop, StopKind
from pvtime.kvm import SystemEventExit
from tests.conftest import make_env

U64 = 2**64 - 1


def x0(env, i, fid, *args):
    return smccc.to_signed(env.call(i, fid, *args)[0])


@pytest.fixture
def env():
    env = make_env(4)
    for v in env.machine.vcpus[1:]:
        v.init(power_off=True)
    return env


def test_version_and_migrate_info_type(env):
    assert x0(env, 0, smccc.PSCI_VERSION) == 0x10001
    assert x0(env, 0, smccc.PSCI_MIGRATE_INFO_TYPE) == 2  # PSCI_0_2_TOS_MP


def test_features_of_every_implemented_call_and_smccc_version(env):
    for fid in (smccc.PSCI_VERSION, smccc.PSCI_CPU_SUSPEND, 0x84000001, smccc.PSCI_CPU_OFF, smccc.PSCI_CPU_ON,
                0x84000003, smccc.PSCI_AFFINITY_INFO, 0x84000004, smccc.PSCI_MIGRATE_INFO_TYPE,
                smccc.PSCI_SYSTEM_OFF, smccc.PSCI_SYSTEM_RESET, smccc.PSCI_FEATURES, smccc.PSCI_SYSTEM_RESET2,
                smccc.SMCCC_VERSION):
        assert x0(env, 0, smccc.PSCI_FEATURES, fid) == 0, hex(fid)
    assert x0(env, 0, smccc.PSCI_FEATURES, 0x8400000E) == smccc.PSCI_NOT_SUPPORTED  # SYSTEM_SUSPEND


def test_cpu_on_checks_affinity_and_state(env):
    assert x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 7) == smccc.PSCI_SUCCESS
    assert not env.vcpu(1).powered_off
    assert x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 7) == smccc.PSCI_ALREADY_ON
    assert x0(env, 0, smccc.PSCI_CPU_ON, 9, 0x4000_1000, 7) == smccc.PSCI_INVALID_PARAMETERS  # no such vCPU
    # Bits outside MPIDR_HWID_BITMASK are invalid, not ignored (kvm_psci_valid_affinity).
    assert x0(env, 0, smccc.PSCI_CPU_ON, 0x8000_0002, 0x4000_1000, 7) == smccc.PSCI_INVALID_PARAMETERS
    assert env.vcpu(2).powered_off


def test_smc32_cpu_on_narrows_its_arguments_to_32_bits(env):
    from pvtime.abi.uapi import REG_PC, reg_x

    assert x0(env, 0, 0x84000003, 0xFFFF_0000_0000_0002, 0xDEAD_0000_4000_1000, 0xAB_0000_0007) == 0
    assert env.vcpu(2).cpu.core_regs[REG_PC] == 0x4000_1000
    assert env.vcpu(2).cpu.core_regs[reg_x(0)] == 7


def test_affinity_info_levels(env):
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0, 0) == smccc.AFFINITY_ON
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 0) == smccc.AFFINITY_OFF
    # Level 1 ignores Aff0: the cluster holding vCPU 1 also holds vCPU 0, which is on.
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 1) == smccc.AFFINITY_ON
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 4) == smccc.PSCI_INVALID_PARAMETERS
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 7, 0) == smccc.PSCI_INVALID_PARAMETERS  # no such vCPU
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0x8000_0001, 0) == smccc.PSCI_INVALID_PARAMETERS


def test_cpu_off_and_suspend(env):
    assert x0(env, 0, smccc.PSCI_CPU_SUSPEND, 0, 0, 0) == smccc.PSCI_SUCCESS
    assert x0(env, 0, smccc.PSCI_CPU_OFF) == smccc.PSCI_SUCCESS
    assert env.vcpu(0).powered_off


@pytest.mark.parametrize("fid,args,event", [
    (smccc.PSCI_SYSTEM_OFF, (), KVM_SYSTEM_EVENT_SHUTDOWN),
    (smccc.PSCI_SYSTEM_RESET, (), KVM_SYSTEM_EVENT_RESET),
    (smccc.PSCI_SYSTEM_RESET2, (0,), KVM_SYSTEM_EVENT_RESET),
])
def test_system_events_stop_every_vcpu_and_preload_internal_failure(env, fid, args, event):
    x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 0)
    assert x0(env, 0, fid, *args) == smccc.PSCI_INTERNAL_FAILURE
    assert all(v.powered_off for v in env.machine.vcpus)
    assert env.vcpu(0)._exit_for(Stop(StopKind.EXIT)) == SystemEventExit(event)  # what run() returns


def test_system_reset2_refuses_unknown_architectural_resets(env):
    assert x0(env, 0, smccc.PSCI_SYSTEM_RESET2, 1) == smccc.PSCI_INVALID_PARAMETERS
    assert not env.vcpu(0).powered_off
