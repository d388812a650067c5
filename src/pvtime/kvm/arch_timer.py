"""The generic timer as KVM emulates it: per-VM counter offsets, per-vCPU virtual and physical timers.

CNTPCT = host counter - poffset and CNTVCT = host counter - voffset (CNTVOFF): both offsets are
per VM and independent of each other, as KVM keeps them since Linux 6.4 (the architecture's
CNTPOFF_EL2 and CNTVOFF_EL2 both subtract from the physical count). A timer asserts its interrupt while ENABLE=1, IMASK=0 and
its counter >= CVAL (level triggered, ISTATUS read-only).

Without an in-kernel vGIC that line is the vCPU's IRQ input; with one, each timer drives a PPI
of the vGIC, numbered by the vCPU attribute group KVM_ARM_VCPU_TIMER_CTRL (end of this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvtime.abi.errno import EBUSY, EINVAL, ENXIO
from pvtime.abi.gic import NR_PRIVATE_IRQS, NR_SGIS
from pvtime.abi.widths import U32, U64, sext32
from pvtime.abi.sysregs import (
    CNTFRQ_EL0, CNTKCTL_EL1, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0, CNTPCT_EL0,
    CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTV_TVAL_EL0, CNTVCT_EL0, CTL_ENABLE, CTL_IMASK, CTL_ISTATUS,
    SysReg,
)
from pvtime.abi.uapi import (
    KVM_ARM_TIMER_DEFAULT_PPIS,
    KVM_ARM_VCPU_TIMER_IRQ_PTIMER,
    KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
)
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps
    from pvtime.kvm.vm import VmState



@dataclass
class VmCounter:
    """Per-VM counter offsets, in host counter ticks."""

    voffset: int = 0  # CNTVOFF
    poffset: int = 0  # physical counter offset (KVM_ARM_SET_COUNTER_OFFSET)
    # (value written, host count at the write) of the last KVM_REG_ARM_{,P}TIMER_CNT write: the
    # instant an LPT rescale at a migrated VM's first run maps from (pvtime.kvm.lpt).
    v_anchor: tuple[int, int] | None = None
    p_anchor: tuple[int, int] | None = None


@dataclass
class Timer:
    """One timer (virtual or physical) of a vCPU."""

    ctl: int = 0
    cval: int = 0

    def asserted(self, count: int) -> bool:
        """The interrupt line: enabled, unmasked and expired."""
        return bool(self.ctl & CTL_ENABLE) and not self.ctl & CTL_IMASK and count >= self.cval

    def read_ctl(self, count: int) -> int:
        """CTL with ISTATUS computed from the counter."""
        status = CTL_ISTATUS if (self.ctl & CTL_ENABLE and count >= self.cval) else 0
        return (self.ctl & (CTL_ENABLE | CTL_IMASK)) | status

    def read_tval(self, count: int) -> int:
        """TVAL: (CVAL - count) as a signed 32-bit value, zero-extended into a register."""
        return (self.cval - count) & U32

    def write_tval(self, count: int, value: int) -> None:
        """TVAL write: CVAL = count + sign_extend32(value)."""
        self.cval = (count + sext32(value)) & U64


class ArchTimer:
    """A vCPU's timers, served from its VM's counter."""

    def __init__(self, counter: VmCounter) -> None:
        self.counter = counter
        self.vtimer = Timer()
        self.ptimer = Timer()
        self.cntkctl = 0

    def reset(self) -> None:
        """kvm_timer_vcpu_reset, at KVM_ARM_VCPU_INIT and PSCI CPU_ON: both timers' CTL to 0.

        That is all KVM resets: ENABLE = 0 lowers both interrupt lines (kvm_timer_update_irq) and
        leaves nothing to emulate; CVAL keeps its value (architecturally UNKNOWN at reset), and the
        counter offsets are the VM's, set only when a vCPU is created (kvm_timer_vcpu_init) or by
        the VMM. (CNTKCTL_EL1, held here too, is a system register: kvm_reset_sys_regs resets it.)
        """
        self.vtimer.ctl = self.ptimer.ctl = 0

    def cntpct(self, host_count: int) -> int:
        """The guest's physical count for a host counter value."""
        return (host_count - self.counter.poffset) & U64

    def cntvct(self, host_count: int) -> int:
        """The guest's virtual count for a host counter value."""
        return (host_count - self.counter.voffset) & U64

    def _timer(self, reg: SysReg, host_count: int) -> tuple[Timer, int, str] | None:
        """The timer a CTL/CVAL/TVAL register belongs to, its counter's value, and the field."""
        spec = _TIMER_FIELDS.get(reg)
        if spec is None:
            return None
        virtual, field = spec
        if virtual:
            return self.vtimer, self.cntvct(host_count), field
        return self.ptimer, self.cntpct(host_count), field

    def read(self, reg: SysReg, host_count: int, freq: int) -> int | None:
        """Serve an MRS of a timer register, or None if `reg` is not a timer register."""
        if reg == CNTVCT_EL0:  # the hot path: counter reads dominate
            return self.cntvct(host_count)
        if reg == CNTPCT_EL0:
            return self.cntpct(host_count)
        if reg == CNTFRQ_EL0:
            return freq
        if reg == CNTKCTL_EL1:
            return self.cntkctl
        found = self._timer(reg, host_count)
        if found is None:
            return None
        timer, count, field = found
        if field == "ctl":
            return timer.read_ctl(count)
        return timer.cval if field == "cval" else timer.read_tval(count)

    def get_user(self, reg: SysReg, host_count: int, freq: int) -> int | None:
        """KVM_GET_ONE_REG of a timer register (kvm_arm_timer_get_reg): a CTL with every bit
        userspace stored, and ISTATUS once the timer has expired whether or not it is enabled
        (read_timer_ctl sets it "regardless of ENABLE bit"); the others as the guest reads them."""
        found = self._timer(reg, host_count)
        if found is not None and found[2] == "ctl":
            timer, count, _ = found
            return timer.ctl | (CTL_ISTATUS if count >= timer.cval else 0)
        return self.read(reg, host_count, freq)

    def set_user(self, reg: SysReg, value: int, host_count: int) -> None:
        """KVM_SET_ONE_REG of a timer register (kvm_arm_timer_set_reg): a CTL keeps all of its 32
        bits but ISTATUS (cnt_ctl is a u32), CNTKCTL_EL1 -- a plain system register to userspace
        -- the whole 64-bit value; the guest's own writes keep only the bits it has."""
        if reg == CNTKCTL_EL1:
            self.cntkctl = value & U64
            return
        found = self._timer(reg, host_count)
        if found is not None and found[2] == "ctl":
            found[0].ctl = value & U32 & ~CTL_ISTATUS
        else:
            self.write(reg, value, host_count)

    def write(self, reg: SysReg, value: int, host_count: int) -> bool:
        """Serve an MSR of a timer register; False if `reg` is not a writable timer register."""
        if reg is CNTV_CVAL_EL0:  # the hot path: a guest's tick programs its next deadline
            self.vtimer.cval = value & U64
            return True
        if reg == CNTKCTL_EL1:
            self.cntkctl = value & U32
            return True
        found = self._timer(reg, host_count)
        if found is None:
            return False
        timer, count, field = found
        if field == "ctl":
            timer.ctl = value & (CTL_ENABLE | CTL_IMASK)
        elif field == "cval":
            timer.cval = value & U64
        else:
            timer.write_tval(count, value)
        return True

    def irq_pending(self, host_count: int) -> bool:
        """Either timer's interrupt line is asserted (`Timer.asserted` of each, written out: this
        runs between every two steps of a model guest)."""
        v, p = self.vtimer, self.ptimer
        if v.ctl & _LINE_MASK == CTL_ENABLE and (host_count - self.counter.voffset) & U64 >= v.cval:
            return True
        return p.ctl & _LINE_MASK == CTL_ENABLE and (host_count - self.counter.poffset) & U64 >= p.cval

    def next_rise_host_count(self, host_count: int) -> int | None:
        """The host counter value, after `host_count`, at which an armed, unmasked timer that is
        not asserted now asserts: with a vGIC a timer drives a level-sensitive PPI, and only a
        rising line can make a halted vCPU's interrupt pending."""
        rises = []
        for timer, offset in ((self.vtimer, self.counter.voffset), (self.ptimer, self.counter.poffset)):
            if timer.ctl & CTL_ENABLE and not timer.ctl & CTL_IMASK \
                    and not timer.asserted((host_count - offset) & U64):
                at = (timer.cval + offset) & U64
                if at > host_count:
                    rises.append(at)
        return min(rises) if rises else None

    def next_fire_host_count(self) -> int | None:
        """The host counter value at which an armed, unmasked timer next asserts."""
        # The offsets are mod 2^64 (a counter behind the guest's).
        v, p = self.vtimer, self.ptimer
        fire = (v.cval + self.counter.voffset) & U64 if v.ctl & _LINE_MASK == CTL_ENABLE else None
        if p.ctl & _LINE_MASK == CTL_ENABLE:
            at = (p.cval + self.counter.poffset) & U64
            if fire is None or at < fire:
                fire = at
        return fire


# CTL's ENABLE and IMASK: a timer drives its line when they read ENABLE alone.
_LINE_MASK = CTL_ENABLE | CTL_IMASK

# CTL/CVAL/TVAL of each timer: (is the virtual timer, field).
_TIMER_FIELDS: dict[SysReg, tuple[bool, str]] = {
    CNTV_CTL_EL0: (True, "ctl"), CNTV_CVAL_EL0: (True, "cval"), CNTV_TVAL_EL0: (True, "tval"),
    CNTP_CTL_EL0: (False, "ctl"), CNTP_CVAL_EL0: (False, "cval"), CNTP_TVAL_EL0: (False, "tval"),
}


# --- which PPI each timer raises: vCPU attribute group KVM_ARM_VCPU_TIMER_CTRL ---------------
# (arch/arm64/kvm/arch_timer.c: kvm_arm_timer_{set,get,has}_attr, kvm_timer_enable)



@dataclass
class TimerPpis:
    """The VM's timer interrupt numbers (kvm->arch.timer_data.ppi): one setting for all vCPUs,
    frozen at the first KVM_RUN that validates them (KVM_ARCH_FLAG_TIMER_PPIS_IMMUTABLE). The EL2
    timers' numbers are kept for the API; pvtime vCPUs have no EL2, so they raise nothing."""

    ppi: dict[int, int] = field(default_factory=lambda: dict(KVM_ARM_TIMER_DEFAULT_PPIS))
    immutable: bool = False


def set_attr(vm: VmState, attr: int, value: object) -> None:
    """kvm_arm_timer_set_attr, checks in Linux's order: no in-kernel vGIC EINVAL, unreadable
    EFAULT, not a PPI (16..31) EINVAL, a vCPU has run EBUSY, unknown attribute ENXIO. Setting it
    on one vCPU sets it for all (the value is the VM's)."""
    if vm.vgic is None:
        raise KvmError(EINVAL, "KVM_ARM_VCPU_TIMER_CTRL: the VM has no in-kernel vGIC")
    irq = _read_int(value)
    if not NR_SGIS <= irq < NR_PRIVATE_IRQS:
        raise KvmError(EINVAL, f"KVM_ARM_VCPU_TIMER_CTRL: interrupt {irq} is not a PPI (16..31)")
    if vm.timer_ppis.immutable:
        raise KvmError(EBUSY, "KVM_ARM_VCPU_TIMER_CTRL: a vCPU has run, the timer PPIs are fixed")
    if attr not in KVM_ARM_TIMER_DEFAULT_PPIS:
        raise KvmError(ENXIO, f"KVM_ARM_VCPU_TIMER_CTRL attribute {attr}: unknown")
    vm.timer_ppis.ppi[attr] = irq


def get_attr(vm: VmState, attr: int) -> int:
    """kvm_arm_timer_get_attr: the timer's PPI (with or without a vGIC)."""
    if attr not in KVM_ARM_TIMER_DEFAULT_PPIS:
        raise KvmError(ENXIO, f"KVM_ARM_VCPU_TIMER_CTRL attribute {attr}: unknown")
    return vm.timer_ppis.ppi[attr]


def has_attr(attr: int) -> None:
    """kvm_arm_timer_has_attr: the four timers' attributes exist."""
    if attr not in KVM_ARM_TIMER_DEFAULT_PPIS:
        raise KvmError(ENXIO, f"KVM_ARM_VCPU_TIMER_CTRL attribute {attr}: unknown")


def timer_enable(vm: VmState, vcpu: Traps) -> None:
    """kvm_timer_enable at a vCPU's first KVM_RUN: with a vGIC, the virtual and physical timers
    must raise different PPIs (timer_irqs_are_valid; else the run fails with EINVAL); then the
    PPIs are frozen for the VM and this vCPU's timers drive them."""
    vgic = vm.vgic
    if vgic is None:
        return
    vppi = vm.timer_ppis.ppi[KVM_ARM_VCPU_TIMER_IRQ_VTIMER]
    pppi = vm.timer_ppis.ppi[KVM_ARM_VCPU_TIMER_IRQ_PTIMER]
    if vppi == pppi:
        raise KvmError(EINVAL, f"KVM_RUN: the virtual and physical timers both raise PPI {vppi}")
    vm.timer_ppis.immutable = True
    vgic.claim_timer_ppis(vcpu.index, vppi, pppi)


def _read_int(value: object) -> int:
    """The int at attr.addr: a Python int in the s32 range, or its 4 little-endian bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and -(1 << 31) <= value < 0:
        return value
    raw = read_user(value, 4, "KVM_ARM_VCPU_TIMER_CTRL")
    return sext32(raw)
