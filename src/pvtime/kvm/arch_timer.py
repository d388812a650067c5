"""The generic timer as KVM emulates it: per-VM counter offsets, per-vCPU virtual and physical timers.

CNTPCT = host counter - poffset, CNTVCT = CNTPCT - voffset (CNTVOFF). Both offsets are per VM,
as KVM keeps them since Linux 6.4. A timer asserts its interrupt while ENABLE=1, IMASK=0 and
its counter >= CVAL (level triggered, ISTATUS read-only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvtime.abi.sysregs import (
    CNTFRQ_EL0, CNTKCTL_EL1, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0, CNTPCT_EL0,
    CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTV_TVAL_EL0, CNTVCT_EL0, CTL_ENABLE, CTL_IMASK, CTL_ISTATUS,
    SysReg,
)

U64 = (1 << 64) - 1


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
        return (self.cval - count) & 0xFFFF_FFFF

    def write_tval(self, count: int, value: int) -> None:
        """TVAL write: CVAL = count + sign_extend32(value)."""
        value &= 0xFFFF_FFFF
        delta = value - (1 << 32) if value >> 31 else value
        self.cval = (count + delta) & U64


class ArchTimer:
    """A vCPU's timers, served from its VM's counter."""

    def __init__(self, counter: VmCounter) -> None:
        self.counter = counter
        self.vtimer = Timer()
        self.ptimer = Timer()
        self.cntkctl = 0

    def cntpct(self, host_count: int) -> int:
        """The guest's physical count for a host counter value."""
        return (host_count - self.counter.poffset) & U64

    def cntvct(self, host_count: int) -> int:
        """The guest's virtual count for a host counter value."""
        return (host_count - self.counter.poffset - self.counter.voffset) & U64

    def read(self, reg: SysReg, host_count: int, freq: int) -> int | None:
        """Serve an MRS of a timer register, or None if `reg` is not a timer register."""
        v, p = self.cntvct(host_count), self.cntpct(host_count)
        match reg:
            case r if r == CNTFRQ_EL0:
                return freq
            case r if r == CNTVCT_EL0:
                return v
            case r if r == CNTPCT_EL0:
                return p
            case r if r == CNTV_CTL_EL0:
                return self.vtimer.read_ctl(v)
            case r if r == CNTV_CVAL_EL0:
                return self.vtimer.cval
            case r if r == CNTV_TVAL_EL0:
                return self.vtimer.read_tval(v)
            case r if r == CNTP_CTL_EL0:
                return self.ptimer.read_ctl(p)
            case r if r == CNTP_CVAL_EL0:
                return self.ptimer.cval
            case r if r == CNTP_TVAL_EL0:
                return self.ptimer.read_tval(p)
            case r if r == CNTKCTL_EL1:
                return self.cntkctl
        return None

    def write(self, reg: SysReg, value: int, host_count: int) -> bool:
        """Serve an MSR of a timer register; False if `reg` is not a writable timer register."""
        v, p = self.cntvct(host_count), self.cntpct(host_count)
        match reg:
            case r if r == CNTV_CTL_EL0:
                self.vtimer.ctl = value & (CTL_ENABLE | CTL_IMASK)
            case r if r == CNTV_CVAL_EL0:
                self.vtimer.cval = value & U64
            case r if r == CNTV_TVAL_EL0:
                self.vtimer.write_tval(v, value)
            case r if r == CNTP_CTL_EL0:
                self.ptimer.ctl = value & (CTL_ENABLE | CTL_IMASK)
            case r if r == CNTP_CVAL_EL0:
                self.ptimer.cval = value & U64
            case r if r == CNTP_TVAL_EL0:
                self.ptimer.write_tval(p, value)
            case r if r == CNTKCTL_EL1:
                self.cntkctl = value & 0xFFFF_FFFF
            case _:
                return False
        return True

    def irq_pending(self, host_count: int) -> bool:
        """Either timer's interrupt line is asserted."""
        return self.vtimer.asserted(self.cntvct(host_count)) or self.ptimer.asserted(self.cntpct(host_count))

    def next_fire_host_count(self) -> int | None:
        """The host counter value at which an armed, unmasked timer next asserts."""
        fires = []
        for timer, offset in ((self.vtimer, self.counter.poffset + self.counter.voffset),
                              (self.ptimer, self.counter.poffset)):
            if timer.ctl & CTL_ENABLE and not timer.ctl & CTL_IMASK:
                fires.append(timer.cval + offset)
        return min(fires) if fires else None
