"""A VMM control thread's kernel calls (`Host.control_call`): they read the time given, and none
of them can pose as a scheduled task."""

import pytest

from pvtime.abi.uapi import KVM_REG_ARM_TIMER_CNT
from pvtime.kvm import IntrExit
from tests.conftest import make_env


def test_a_control_call_reads_its_own_instant_and_then_the_host_clock_again():
    env = make_env(1, counter_hz=1_000_000_000)
    with env.host.control_call(5_000_000):
        assert env.host.now_ns() == 5_000_000
        assert env.host.counter() == 5_000_000
        # KVM_GET_ONE_REG of the virtual counter is read at that instant (CNTVOFF is 0 here)
        assert env.vcpu(0).get_one_reg(KVM_REG_ARM_TIMER_CNT) == 5_000_000
    assert env.host.now_ns() == env.host.clock_ns == 0


def test_kvm_run_with_immediate_exit_needs_no_task_but_one_entering_the_guest_does():
    # kvm_arch_vcpu_ioctl_run returns -EINTR before guest entry when immediate_exit is set, so no
    # task's run_delay is read; a run that would enter the guest needs the calling thread.
    env = make_env(1)
    vcpu = env.vcpu(0)
    with env.host.control_call(1_000):
        vcpu.immediate_exit = True
        assert isinstance(vcpu.run(), IntrExit)
        vcpu.immediate_exit = False
        with pytest.raises(RuntimeError, match="host task on a CPU"):
            vcpu.run()


def test_a_control_call_while_a_task_is_on_a_cpu_is_refused():
    env = make_env(1)
    with env.host.on_cpu(env.tasks[0], 1_000), pytest.raises(RuntimeError, match="control call while"):
        with env.host.control_call(0):
            pass
