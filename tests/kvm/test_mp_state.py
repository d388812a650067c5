"""KVM_GET_MP_STATE / KVM_SET_MP_STATE as arm64 KVM answers them (arch/arm64/kvm/arm.c:
kvm_arch_vcpu_ioctl_get_mpstate, kvm_arch_vcpu_ioctl_set_mpstate)."""

import pytest

from pvtime.abi import smccc
from pvtime.abi.errno import EINVAL
from pvtime.abi.uapi import (
    KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED, KVM_MP_STATE_SUSPENDED,
    KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL, REG_PC,
)
from pvtime.kvm import HaltExit, IntrExit, KvmError
from tests.conftest import make_env


def test_a_vcpu_is_runnable_and_one_initialised_powered_off_is_stopped():
    env = make_env(2)
    env.vcpu(1).init(power_off=True)  # KVM_ARM_VCPU_POWER_OFF
    assert [v.get_mp_state() for v in env.machine.vcpus] == [KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED]


def test_psci_cpu_on_and_cpu_off_show_in_the_mp_state():
    env = make_env(2)
    env.vcpu(1).init(power_off=True)
    assert env.call(0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 0)[0] == smccc.PSCI_SUCCESS
    assert env.vcpu(1).get_mp_state() == KVM_MP_STATE_RUNNABLE
    env.call(1, smccc.PSCI_CPU_OFF)
    assert env.vcpu(1).get_mp_state() == KVM_MP_STATE_STOPPED


def test_a_vcpu_waiting_in_cpu_suspend_is_runnable():
    env = make_env(1)
    env.vcpu(0).set_one_reg(KVM_REG_ARM_TIMER_CVAL, 10**9)
    env.vcpu(0).set_one_reg(KVM_REG_ARM_TIMER_CTL, 1)
    env.call(0, smccc.PSCI_CPU_SUSPEND)
    assert isinstance(env.exits[-1], HaltExit)  # blocked until the timer
    assert env.vcpu(0).get_mp_state() == KVM_MP_STATE_RUNNABLE


def test_stopped_parks_the_vcpu_and_runnable_resumes_it_where_it_stood():
    env = make_env(1)
    vcpu = env.vcpu(0)
    vcpu.set_one_reg(REG_PC, 0x4000_1234)
    vcpu.set_mp_state(KVM_MP_STATE_STOPPED)
    with env.host.on_cpu(env.tasks[0], 0):
        assert vcpu.run() == HaltExit(None)  # powered off: nothing to wake it but CPU_ON
    vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)
    assert vcpu.get_one_reg(REG_PC) == 0x4000_1234  # no reset, unlike PSCI CPU_ON
    env.load(0)  # the next KVM_RUN enters the guest
    assert env.exits[-1] == IntrExit()


# HALTED is x86's. Linux accepts SUSPENDED (PSCI SYSTEM_SUSPEND, since 5.19); pvtime offers no
# SYSTEM_SUSPEND (PSCI_FEATURES says NOT_SUPPORTED), so it refuses the state too.
@pytest.mark.parametrize("state", [KVM_MP_STATE_HALTED, KVM_MP_STATE_SUSPENDED, 99])
def test_other_states_are_einval(state):
    env = make_env(1)
    with pytest.raises(KvmError) as err:
        env.vcpu(0).set_mp_state(state)
    assert err.value.errno == EINVAL
    assert env.vcpu(0).get_mp_state() == KVM_MP_STATE_RUNNABLE
