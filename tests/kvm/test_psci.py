"""PSCI as KVM answers it (arch/arm64/kvm/psci.c: kvm_psci_0_2_call, kvm_psci_1_x_call,
kvm_psci_vcpu_suspend, kvm_psci_vcpu_on; reset.c: kvm_reset_vcpu; sys_regs.c: reset_mpidr)."""

import pytest

from pvtime.abi import smccc
from pvtime.abi.widths import s64
from pvtime.abi.sysregs import (
    CNTKCTL_EL0VCTEN, CNTKCTL_EVNTEN, CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTVCT_EL0, CTL_ENABLE, CTL_ISTATUS,
    MPIDR_EL1,
)
from pvtime.abi.uapi import (
    KVM_MP_STATE_STOPPED, KVM_REG_ARM_CNTKCTL_EL1, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CTL,
    KVM_REG_ARM_PTIMER_CVAL, KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, reg_x,
)
from pvtime.guest.machine import Compute, WaitForInterrupt
from pvtime.kvm import HaltExit, IntrExit, SystemEventExit
from pvtime.kvm.traps import reset_mpidr
from tests.conftest import make_env
from tests.cpu.asm import assemble
from tests.cpu.rig import Rig

U64 = 2**64 - 1


def x0(env, i, fid, *args):
    return s64(env.call(i, fid, *args)[0])


def off(vcpu):
    """KVM_GET_MP_STATE says the vCPU is powered off."""
    return vcpu.get_mp_state() == KVM_MP_STATE_STOPPED


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
    assert not off(env.vcpu(1))
    assert x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 7) == smccc.PSCI_ALREADY_ON
    assert x0(env, 0, smccc.PSCI_CPU_ON, 9, 0x4000_1000, 7) == smccc.PSCI_INVALID_PARAMETERS  # no such vCPU
    # Bits outside MPIDR_HWID_BITMASK are invalid, not ignored (kvm_psci_valid_affinity).
    assert x0(env, 0, smccc.PSCI_CPU_ON, 0x8000_0002, 0x4000_1000, 7) == smccc.PSCI_INVALID_PARAMETERS
    assert off(env.vcpu(2))


def test_smc32_cpu_on_narrows_its_arguments_to_32_bits(env):
    from pvtime.abi.uapi import REG_PC

    assert x0(env, 0, 0x84000003, 0xFFFF_0000_0000_0002, 0xDEAD_0000_4000_1000, 0xAB_0000_0007) == 0
    assert env.vcpu(2).get_one_reg(REG_PC) == 0x4000_1000
    assert env.vcpu(2).get_one_reg(reg_x(0)) == 7


def test_affinity_info_levels(env):
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0, 0) == smccc.AFFINITY_ON
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 0) == smccc.AFFINITY_OFF
    # Level 1 ignores Aff0: the cluster holding vCPU 1 also holds vCPU 0, which is on.
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 1) == smccc.AFFINITY_ON
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 1, 4) == smccc.PSCI_INVALID_PARAMETERS
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 7, 0) == smccc.PSCI_INVALID_PARAMETERS  # no such vCPU
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0x8000_0001, 0) == smccc.PSCI_INVALID_PARAMETERS


def test_cpu_off(env):
    assert x0(env, 0, smccc.PSCI_CPU_OFF) == smccc.PSCI_SUCCESS
    assert off(env.vcpu(0))


@pytest.mark.parametrize("fid,args,event", [
    (smccc.PSCI_SYSTEM_OFF, (), KVM_SYSTEM_EVENT_SHUTDOWN),
    (smccc.PSCI_SYSTEM_RESET, (), KVM_SYSTEM_EVENT_RESET),
    (smccc.PSCI_SYSTEM_RESET2, (0,), KVM_SYSTEM_EVENT_RESET),
])
def test_system_events_stop_every_vcpu_and_preload_internal_failure(env, fid, args, event):
    x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 0)
    assert x0(env, 0, fid, *args) == smccc.PSCI_INTERNAL_FAILURE
    assert all(off(v) for v in env.machine.vcpus)
    assert env.exits[-1] == SystemEventExit(event)  # what the caller's KVM_RUN returned


def test_system_reset2_refuses_unknown_architectural_resets(env):
    assert x0(env, 0, smccc.PSCI_SYSTEM_RESET2, 1) == smccc.PSCI_INVALID_PARAMETERS
    assert not off(env.vcpu(0))


# --- CPU_SUSPEND: kvm_psci_vcpu_suspend -> kvm_vcpu_wfi ----------------------------------------

# vCPU 0 arms its virtual timer 2500 ticks (100 us at 25 MHz) ahead with IRQs masked (the reset
# DAIF), calls CPU_SUSPEND, then records the call's x0 and the counter, disables the timer and parks.
SUSPEND_UNTIL_TIMER = """
    mrs x2, cntvct_el0
    add x2, x2, #{ahead}
    msr cntv_cval_el0, x2
    mov x3, #1
    msr cntv_ctl_el0, x3
    movz x0, #0xc400, lsl #16
    movk x0, #1
    mov x1, #0
    hvc #0
    mov x20, x0
    mrs x21, cntvct_el0
    msr cntv_ctl_el0, xzr
    wfi
"""


def test_cpu_suspend_blocks_the_unicorn_vcpu_until_its_timer_then_returns_success():
    rig = Rig(assemble(SUSPEND_UNTIL_TIMER.format(ahead=2500)))
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(reg_x(20), 0x5A)
    assert rig.run() == HaltExit(100_000)  # blocked in the call: the wake-up is the timer's
    assert vcpu.get_one_reg(reg_x(20)) == 0x5A and vcpu.get_one_reg(reg_x(21)) == 0
    rig.host.idle(50_000 - rig.host.clock_ns)
    assert rig.run() == HaltExit(100_000)  # still blocked: nothing executes before the interrupt
    assert vcpu.get_one_reg(reg_x(21)) == 0
    rig.host.idle(100_000 - rig.host.clock_ns)
    assert rig.run() == HaltExit(None)  # woke (masked IRQ, as WFI), went on, parked with no timer
    assert vcpu.get_one_reg(reg_x(20)) == smccc.PSCI_SUCCESS
    assert vcpu.get_one_reg(reg_x(21)) >= 2500


def test_cpu_suspend_with_an_interrupt_already_pending_returns_at_once_on_unicorn():
    # CVAL = now: the timer asserts before the call (its IRQ masked, so nothing takes it).
    rig = Rig(assemble(SUSPEND_UNTIL_TIMER.format(ahead=0)))
    vcpu = rig.vcpus[0]
    assert rig.run() == HaltExit(None)  # straight through the call to the final park
    assert vcpu.get_one_reg(reg_x(20)) == smccc.PSCI_SUCCESS
    assert rig.host.clock_ns < 1_000  # a few instructions' time, no wait


def test_cpu_suspend_blocks_the_model_vcpu_at_its_next_step_until_its_timer():
    seen: dict[str, list[int]] = {"x0": [], "after": [], "irq": []}

    class Program:
        def main(self, cpu, index):
            cpu.msr(CNTV_CVAL_EL0, cpu.mrs(CNTVCT_EL0) + 2500)  # 100 us at 25 MHz
            cpu.msr(CNTV_CTL_EL0, CTL_ENABLE)
            seen["x0"].append(cpu.hvc(smccc.PSCI_CPU_SUSPEND)[0])
            yield Compute(1_000)  # the vCPU blocks here: this runs after the wake-up
            seen["after"].append(cpu.mrs(CNTVCT_EL0))
            yield WaitForInterrupt()

        def irq(self, cpu, index):
            seen["irq"].append(cpu.mrs(CNTVCT_EL0))
            cpu.msr(CNTV_CTL_EL0, 0)

    env = make_env(1)
    env.machine.load_model_guest(Program())
    with env.host.on_cpu(env.tasks[0], 10_000_000):
        assert env.vcpu(0).run() == HaltExit(100_000)
    assert seen == {"x0": [smccc.PSCI_SUCCESS], "after": [], "irq": []}
    env.host.idle(100_000 - env.host.clock_ns)
    with env.host.on_cpu(env.tasks[0], 10_000_000):
        assert env.vcpu(0).run() == HaltExit(None)
    assert seen["irq"] == [2500]  # the interrupt that ended the wait, taken on resumption
    assert seen["after"] == [2525]  # then the step the program yielded after the call


def test_a_reset_ends_a_cpu_suspend_wait(env):
    vcpu = env.vcpu(0)
    vcpu.set_one_reg(KVM_REG_ARM_TIMER_CVAL, 10**9)
    vcpu.set_one_reg(KVM_REG_ARM_TIMER_CTL, 1)
    assert x0(env, 0, smccc.PSCI_CPU_SUSPEND, 0, 0, 0) == smccc.PSCI_SUCCESS
    assert env.exits[-1] == HaltExit(40 * 10**9)  # the vCPU blocks until CVAL (10^9 ticks at 25 MHz)
    vcpu.init()
    env.load(0)  # the next KVM_RUN enters the guest: the wait is over
    assert env.exits[-1] == IntrExit()


# --- CPU_ON resets the target: kvm_reset_vcpu -> kvm_reset_sys_regs, kvm_timer_vcpu_reset -------

def test_cpu_on_resets_the_targets_timers_as_kvm_timer_vcpu_reset(env):
    env.host.idle(1_000_000)  # host counter 25_000
    v1 = env.vcpu(1)
    v1.set_one_reg(KVM_REG_ARM_TIMER_CNT, 1_000)  # the VM's offsets: voffset 24_000 ...
    v1.set_one_reg(KVM_REG_ARM_PTIMER_CNT, 5_000)  # ... poffset 20_000
    v1.set_one_reg(KVM_REG_ARM_TIMER_CVAL, 0)
    v1.set_one_reg(KVM_REG_ARM_TIMER_CTL, 1)  # enabled and expired: the line is asserted
    v1.set_one_reg(KVM_REG_ARM_PTIMER_CVAL, 77_777)
    v1.set_one_reg(KVM_REG_ARM_PTIMER_CTL, 1)
    v1.set_one_reg(KVM_REG_ARM_CNTKCTL_EL1, CNTKCTL_EVNTEN | CNTKCTL_EL0VCTEN)
    assert v1.get_one_reg(KVM_REG_ARM_TIMER_CTL) == CTL_ENABLE | CTL_ISTATUS  # asserted
    assert v1.get_one_reg(KVM_REG_ARM_PTIMER_CTL) == CTL_ENABLE  # armed
    v1.set_mp_state(KVM_MP_STATE_STOPPED)
    assert x0(env, 0, smccc.PSCI_CPU_ON, 1, 0x4000_1000, 7) == smccc.PSCI_SUCCESS
    # Both CTLs are 0 (timers off, lines low, nothing to wake for); CNTKCTL_EL1 is back at 0.
    # Userspace still reads ISTATUS on the expired vtimer: arch_timer.c read_timer_ctl sets it
    # once CVAL has passed "regardless of ENABLE bit".
    assert v1.get_one_reg(KVM_REG_ARM_TIMER_CTL) == CTL_ISTATUS
    assert v1.get_one_reg(KVM_REG_ARM_PTIMER_CTL) == 0  # CVAL 77_777 has not passed
    assert v1.get_one_reg(KVM_REG_ARM_CNTKCTL_EL1) == 0
    # CVAL keeps its value, and the counter offsets are the VM's: a reset does not touch them.
    assert v1.get_one_reg(KVM_REG_ARM_TIMER_CVAL) == 0
    assert v1.get_one_reg(KVM_REG_ARM_PTIMER_CVAL) == 77_777
    assert v1.get_one_reg(KVM_REG_ARM_TIMER_CNT) == 1_000
    assert v1.get_one_reg(KVM_REG_ARM_PTIMER_CNT) == 5_000
    # KVM_ARM_VCPU_INIT is the same kvm_reset_vcpu.
    v1.set_one_reg(KVM_REG_ARM_TIMER_CTL, 1)
    v1.set_one_reg(KVM_REG_ARM_CNTKCTL_EL1, CNTKCTL_EVNTEN)
    v1.init()
    assert v1.get_one_reg(KVM_REG_ARM_TIMER_CTL) & 0b11 == 0
    assert v1.get_one_reg(KVM_REG_ARM_CNTKCTL_EL1) == 0


# --- MPIDR: reset_mpidr (arch/arm64/kvm/sys_regs.c) ---------------------------------------------

@pytest.mark.parametrize("vcpu_id,mpidr", [
    (0, 0x8000_0000), (1, 0x8000_0001), (15, 0x8000_000F), (16, 0x8000_0100), (17, 0x8000_0101),
    (0xFF, 0x8000_0F0F), (0x1000, 0x8001_0000), (0x12345, 0x8012_3405),
])
def test_reset_mpidr_packs_16_vcpus_per_aff0(vcpu_id, mpidr):
    assert reset_mpidr(vcpu_id) == mpidr


def test_cpu_on_to_mpidr_0x100_reaches_vcpu_16():
    env = make_env(18)
    assert [env.guest(i, lambda i=i: env.cpu(i).view.mrs(MPIDR_EL1)) for i in (0, 15, 16, 17)] == \
        [0x8000_0000, 0x8000_000F, 0x8000_0100, 0x8000_0101]
    for v in env.machine.vcpus[1:]:
        v.init(power_off=True)
    assert x0(env, 0, smccc.PSCI_CPU_ON, 0x10, 0x4000_1000, 7) == smccc.PSCI_INVALID_PARAMETERS  # Aff0 < 16
    assert x0(env, 0, smccc.PSCI_CPU_ON, 0x100, 0x4000_1000, 7) == smccc.PSCI_SUCCESS
    assert [i for i, v in enumerate(env.machine.vcpus) if not off(v)] == [0, 16]
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0x100, 0) == smccc.AFFINITY_ON
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0x101, 0) == smccc.AFFINITY_OFF
    # Level 1 compares Aff1 and up: cluster 1 (vCPUs 16, 17) has vCPU 16 on; cluster 0 only vCPU 0.
    assert x0(env, 0, smccc.PSCI_AFFINITY_INFO, 0x10F, 1) == smccc.AFFINITY_ON
    x0(env, 0, smccc.PSCI_CPU_OFF)
    assert x0(env, 16, smccc.PSCI_AFFINITY_INFO, 0x00F, 1) == smccc.AFFINITY_OFF


# --- calls that do not return: kvm_psci_vcpu_off, kvm_prepare_system_event ---------------------

@pytest.mark.parametrize("fid,args,exit_", [
    (smccc.PSCI_CPU_OFF, (), HaltExit(None)),
    (smccc.PSCI_SYSTEM_OFF, (), SystemEventExit(KVM_SYSTEM_EVENT_SHUTDOWN)),
    (smccc.PSCI_SYSTEM_RESET2, (0,), SystemEventExit(KVM_SYSTEM_EVENT_RESET)),
])
def test_a_model_guest_runs_nothing_after_a_call_that_powers_its_vcpu_off(fid, args, exit_):
    """On a CPU the instruction after CPU_OFF (or a system event) never executes: the model
    program's code after the call does not run, and the hypervisor answers nothing more."""
    after: list[int] = []

    class Program:
        def main(self, cpu, index):
            cpu.hvc(fid, *args)
            after.append(cpu.hvc(smccc.PSCI_CPU_ON, 0, 0x4000_1000, 0)[0])  # CPU_ON aimed at itself
            yield Compute(1_000)

        def irq(self, cpu, index):
            pass

    env = make_env(1)
    env.machine.load_model_guest(Program())
    with env.host.on_cpu(env.tasks[0], 10_000_000):
        assert env.vcpu(0).run() == exit_
    assert after == []
    assert off(env.vcpu(0))
