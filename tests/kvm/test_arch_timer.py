"""The generic timer as KVM emulates it (arch/arm64/kvm/arch_timer.c): ISTATUS, TVAL, offsets."""

from pvtime.abi.sysregs import (
    CNTFRQ_EL0, CNTKCTL_EL1, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0, CNTPCT_EL0, CNTV_CTL_EL0,
    CNTV_CVAL_EL0, CNTV_TVAL_EL0, CNTVCT_EL0, CTL_ENABLE, CTL_IMASK, CTL_ISTATUS,
)
from pvtime.kvm.arch_timer import ArchTimer, VmCounter


def timer(voff=0, poff=0):
    return ArchTimer(VmCounter(voffset=voff, poffset=poff))


def test_counters_apply_the_per_vm_offsets_independently():
    # Linux >= 6.4: CNTVCT = phys - voffset and CNTPCT = phys - poffset (not chained).
    t = timer(voff=100, poff=10)
    assert t.read(CNTPCT_EL0, 1_000, 25) == 990
    assert t.read(CNTVCT_EL0, 1_000, 25) == 900
    assert t.read(CNTFRQ_EL0, 1_000, 25_000_000) == 25_000_000


def test_istatus_is_computed_and_read_only():
    t = timer()
    t.write(CNTV_CVAL_EL0, 500, 0)
    t.write(CNTV_CTL_EL0, CTL_ENABLE | CTL_ISTATUS, 0)  # ISTATUS written: ignored
    assert t.read(CNTV_CTL_EL0, 499, 1) == CTL_ENABLE
    assert t.read(CNTV_CTL_EL0, 500, 1) == CTL_ENABLE | CTL_ISTATUS
    t.write(CNTV_CTL_EL0, 0, 0)
    assert t.read(CNTV_CTL_EL0, 900, 1) == 0  # a disabled timer never reports ISTATUS


def test_tval_is_a_signed_32_bit_view_of_cval_minus_count():
    t = timer()
    t.write(CNTV_TVAL_EL0, 0xFFFF_FFFF, 1_000)  # -1
    assert t.read(CNTV_CVAL_EL0, 1_000, 1) == 999
    assert t.read(CNTV_TVAL_EL0, 1_000, 1) == 0xFFFF_FFFF
    t.write(CNTV_TVAL_EL0, 0x7FFF_FFFF, 1_000)
    assert t.read(CNTV_CVAL_EL0, 0, 1) == 1_000 + 0x7FFF_FFFF
    t.write(CNTV_TVAL_EL0, 0x1_0000_0005, 1_000)  # only the low 32 bits count
    assert t.read(CNTV_CVAL_EL0, 0, 1) == 1_005


def test_physical_timer_uses_the_physical_counter():
    t = timer(voff=1_000)
    t.write(CNTP_TVAL_EL0, 10, 5_000)
    assert t.read(CNTP_CVAL_EL0, 0, 1) == 5_010
    t.write(CNTP_CTL_EL0, CTL_ENABLE, 0)
    assert not t.irq_pending(5_009) and t.irq_pending(5_010)


def test_interrupt_line_needs_enable_unmasked_and_expired():
    t = timer(voff=100)
    t.write(CNTV_CVAL_EL0, 400, 0)
    assert not t.irq_pending(1_000)  # not enabled
    t.write(CNTV_CTL_EL0, CTL_ENABLE | CTL_IMASK, 0)
    assert not t.irq_pending(1_000)  # masked
    t.write(CNTV_CTL_EL0, CTL_ENABLE, 0)
    assert not t.irq_pending(499) and t.irq_pending(500)  # CNTVCT = host - 100
    assert t.next_fire_host_count() == 500
    t.counter.poffset = 7  # the physical offset does not move the virtual counter
    assert t.irq_pending(500) and t.next_fire_host_count() == 500


def test_next_fire_is_the_earlier_of_both_timers_and_none_when_disarmed():
    t = timer()
    assert t.next_fire_host_count() is None
    t.write(CNTV_CVAL_EL0, 900, 0)
    t.write(CNTV_CTL_EL0, CTL_ENABLE, 0)
    t.write(CNTP_CVAL_EL0, 700, 0)
    t.write(CNTP_CTL_EL0, CTL_ENABLE, 0)
    assert t.next_fire_host_count() == 700


def test_unknown_registers_are_not_served():
    from pvtime.abi.sysregs import MPIDR_EL1

    t = timer()
    assert t.read(MPIDR_EL1, 0, 1) is None
    assert not t.write(CNTVCT_EL0, 5, 0)  # the counter is read-only
    assert t.write(CNTKCTL_EL1, 0x1_0000_0003, 0) and t.read(CNTKCTL_EL1, 0, 1) == 3


def test_one_reg_counter_writes_set_independent_offsets_in_any_order():
    # A VMM restoring registers in KVM_GET_REG_LIST order writes TIMER_CNT before PTIMER_CNT.
    from pvtime.abi.uapi import KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_TIMER_CNT
    from tests.conftest import make_env

    env = make_env(1)
    env.host.idle(1_000_000_000)  # host counter now 25_000_000
    vcpu = env.vcpu(0)
    vcpu.set_one_reg(KVM_REG_ARM_TIMER_CNT, 1_000)
    vcpu.set_one_reg(KVM_REG_ARM_PTIMER_CNT, 5_000_000)
    assert vcpu.get_one_reg(KVM_REG_ARM_TIMER_CNT) == 1_000
    assert vcpu.get_one_reg(KVM_REG_ARM_PTIMER_CNT) == 5_000_000
