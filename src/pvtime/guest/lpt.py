"""The guest's clocksource and timers: the architected counter, or Live Physical Time (2020 RFC).

Two clocksources with one interface, so the model kernel does not care which it has:

- :class:`ArchCounter` -- what a guest without LPT uses: CNTVCT/CNTPCT and the timers as the
  hardware has them, at the frequency CNTFRQ_EL0 reads (the native one of whatever host the VM
  runs on; an LPT-unaware guest reads it once at boot, so after a migration to a host of another
  frequency its clock runs at the wrong rate -- docs/semantics.md section 5, and what the tests show);
- :class:`LptClock` -- the RFC's paravirtualized counter: probed like stolen time with
  PV_TIME_LPT, it presents ``pv_freq`` as the frequency; every counter read goes native -> PV and
  every timer write PV -> native with the record's scale factors (:mod:`pvtime.fixedpoint`, the
  arithmetic the host uses too).

How the LPT clocksource differs from the RFC, on purpose:

- timer writes (CVAL and TVAL) use :func:`pvtime.fixedpoint.pv_to_native_deadline`, the smallest
  native count whose PV value reaches the deadline, so a timer never fires before its PV deadline
  (the RFC's truncating reverse product can fire early by one native tick or more; it is kept as
  ``KernelOptions.quirk_lpt_truncating_timer`` to show it);
- a TVAL write is turned into a CVAL write (the converted delta may not fit TVAL's 32 bits).

Every conversion is wrapped in the sequence retry loop: read ``sequence_number``, take the scale
factors (re-read from the record only when the sequence changed), do the access, re-read the
sequence, and repeat if it moved or is odd -- a migration happened in between and the native
value belongs to the other host. As in the RFC (and any Linux seqcount reader) the loop retries
until it reads a consistent value, however many times that takes: it never returns a torn one,
and counts each retry in ``ClockStats.retries``. A corrupt record after boot is not trusted: the
last good factors stay in use and a message is logged (the model kernel never panics the host).

EL0 (user space) counter reads. The RFC makes them trap: the kernel clears CNTKCTL_EL1.EL0VCTEN
and EL0PCTEN, so an EL0 ``mrs`` of CNTVCT/CNTPCT/CNTFRQ is an undefined instruction that the
kernel's hook emulates through this clocksource. The model has no EL0 code of its own, so
:func:`el0_mrs` *is* that path: it checks CNTKCTL_EL1 exactly as the hardware would; when the
access is enabled it returns the raw register (what a user program reads directly), otherwise it
returns the kernel's emulation (what the trap handler writes back to the user's register).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pvtime import fixedpoint
from pvtime.abi import smccc
from pvtime.abi.linux import ARCH_TIMER_EVT_STREAM_FREQ
from pvtime.abi.records import LPT_RECORD_SIZE, LPT_SEQUENCE_OFFSET, LptRecord, RecordError
from pvtime.abi.sysregs import (
    CNTFRQ_EL0, CNTKCTL_EL0PCTEN, CNTKCTL_EL0VCTEN, CNTKCTL_EL1, CNTKCTL_EVNTEN, CNTKCTL_EVNTI_MASK,
    CNTKCTL_EVNTI_SHIFT, CNTP_CVAL_EL0, CNTPCT_EL0, CNTV_CVAL_EL0, CNTVCT_EL0, EL0_COUNTER_ENABLE, SysReg,
)
from pvtime.abi.widths import U32, U64, s64, sext32
from pvtime.fixedpoint import ScaleFactors
from pvtime.guest.machine import GuestCpu, GuestPanic
from pvtime.guest.paravirt import has_pv_time

MAX_SPINS = 100_000  # retries in a row before the model kernel gives up (see _consistently)
_T = TypeVar("_T")


@dataclass
class ClockStats:
    """What the clocksource did: reads, retries of the sequence loop, rejected records."""

    reads: int = 0
    timer_writes: int = 0
    retries: int = 0
    refreshes: int = 0  # the scale factors were re-read (a new VM start: boot or migration)
    bad_records: int = 0
    messages: list[str] = field(default_factory=list)


class ArchCounter:
    """The architected counter as-is: CNTFRQ_EL0's frequency, raw counts, raw compare values."""

    name = "arch_sys_counter"
    lpt = False

    def __init__(self, cpu: GuestCpu) -> None:
        self.freq = cpu.mrs(CNTFRQ_EL0)  # read once at boot, as Linux's arch_timer does
        self.stats = ClockStats()

    def cpu_init(self, cpu: GuestCpu) -> None:
        """Per-CPU setup: Linux lets user space read the virtual counter directly (EL0VCTEN)."""
        cpu.msr(CNTKCTL_EL1, (cpu.mrs(CNTKCTL_EL1) | CNTKCTL_EL0VCTEN) & U32)

    def read(self, cpu: GuestCpu, physical: bool = False) -> int:
        """CNTVCT (or CNTPCT)."""
        self.stats.reads += 1
        return cpu.mrs(CNTPCT_EL0 if physical else CNTVCT_EL0)

    def set_cval(self, cpu: GuestCpu, deadline: int, physical: bool = False) -> None:
        """CNTV_CVAL (or CNTP_CVAL) = deadline."""
        self.stats.timer_writes += 1
        cpu.msr(CNTP_CVAL_EL0 if physical else CNTV_CVAL_EL0, deadline & U64)

    def set_tval(self, cpu: GuestCpu, tval: int, physical: bool = False) -> None:
        """TVAL write: CVAL = counter + sign_extend32(tval)."""
        self.set_cval(cpu, self.read(cpu, physical) + sext32(tval), physical)

    def read_cval(self, cpu: GuestCpu, physical: bool = False) -> int:
        """The compare value in this clocksource's units."""
        return cpu.mrs(CNTP_CVAL_EL0 if physical else CNTV_CVAL_EL0)

    def read_tval(self, cpu: GuestCpu, physical: bool = False) -> int:
        """TVAL: (CVAL - counter) as 32 bits."""
        return (self.read_cval(cpu, physical) - self.read(cpu, physical)) & U32

    def set_event_stream(self, cpu: GuestCpu, index: int, evnti: int) -> int:
        """Enable the event stream on bit `evnti` of the counter; returns the EVNTI programmed."""
        _write_evnt(cpu, evnti)
        return evnti

    def refresh(self, cpu: GuestCpu, index: int) -> None:
        """Nothing to refresh: the hardware's values are used as they are."""


class LptClock:
    """The LPT clocksource: PV counts at ``pv_freq`` over whatever native counter the host has."""

    name = "pv_lpt_counter"
    lpt = True

    def __init__(self, cpu: GuestCpu, ipa: int, record: LptRecord, *, truncating_timer: bool = False) -> None:
        self.ipa = ipa
        self.freq = record.pv_freq
        self.truncating_timer = truncating_timer
        self.stats = ClockStats()
        self._seq = record.sequence_number
        self._sf = ScaleFactors.from_record(record)
        self._evnti: dict[int, int] = {}  # cpu index -> EVNTI the kernel asked for (PV units)
        self._evnt_seq: dict[int, int] = {}  # cpu index -> sequence its CNTKCTL was written at

    def cpu_init(self, cpu: GuestCpu) -> None:
        """Per-CPU setup: EL0 counter reads must trap to the kernel (the RFC), so clear EL0PCTEN
        and EL0VCTEN (which also makes an EL0 read of CNTFRQ trap)."""
        cpu.msr(CNTKCTL_EL1, cpu.mrs(CNTKCTL_EL1) & ~(CNTKCTL_EL0PCTEN | CNTKCTL_EL0VCTEN) & U32)

    @classmethod
    def probe(cpu_cls, cpu: GuestCpu, messages: list[str], *, truncating_timer: bool = False) -> LptClock | None:
        """The LPT probe, the stolen-time one with PV_TIME_LPT; None when LPT is not usable.

        :func:`~pvtime.guest.paravirt.has_pv_time` for PV_TIME_LPT, then PV_TIME_LPT (x1 = 0)
        gives the record's IPA; the record must pass ``LptRecord.validate`` (revision and
        attributes 0, bit 0 of the sequence clear, non-zero frequencies, shifts in range) and
        carry canonical scale factors.
        """
        if not has_pv_time(cpu, smccc.PV_TIME_LPT):
            return None
        ipa = cpu.hvc(smccc.PV_TIME_LPT, 0)[0]
        if s64(ipa) < 0:
            return None
        try:
            record = LptRecord.unpack(cpu.read(ipa, LPT_RECORD_SIZE))
            record.validate()
            if not ScaleFactors.from_record(record).is_canonical():
                raise RecordError("LPT record: scale factors do not match the frequencies")
        except (RecordError, ValueError) as err:
            messages.append(f"arm-pv: LPT record rejected ({err}); using the architected counter")
            return None
        messages.append(f"arm-pv: using LPT, {record.pv_freq} Hz over a {record.native_freq} Hz counter")
        return cpu_cls(cpu, ipa, record, truncating_timer=truncating_timer)

    @property
    def factors(self) -> ScaleFactors:
        """The scale factors last read from the record."""
        return self._sf

    def _sequence(self, cpu: GuestCpu) -> int:
        return cpu.load64(self.ipa + LPT_SEQUENCE_OFFSET)

    def _factors(self, cpu: GuestCpu) -> tuple[int, ScaleFactors]:
        """(sequence, factors) now; the record is re-read only when the sequence moved."""
        seq = self._sequence(cpu)
        if seq != self._seq and not seq & 1:
            try:
                record = LptRecord.unpack(cpu.read(self.ipa, LPT_RECORD_SIZE))
                record.validate()
                sf = ScaleFactors.from_record(record)
                if record.sequence_number != seq or record.pv_freq != self.freq or not sf.is_canonical():
                    raise RecordError("LPT record: inconsistent after a sequence change")
            except (RecordError, ValueError) as err:
                self.stats.bad_records += 1
                self.stats.messages.append(f"arm-pv: LPT record rejected ({err}); keeping the last factors")
                return seq, self._sf
            self._seq, self._sf = seq, sf
            self.stats.refreshes += 1
        return seq, self._sf

    def _stable(self, cpu: GuestCpu, seq: int) -> bool:
        if not seq & 1 and self._sequence(cpu) == seq:
            return True
        self.stats.retries += 1
        return False

    def _consistently(self, cpu: GuestCpu, access: Callable[[ScaleFactors], _T]) -> tuple[_T, ScaleFactors, int]:
        """The retry loop every LPT access is wrapped in: run `access` with the record's factors
        until the sequence number is even and did not move across it (no bound, as in the RFC).

        A record that never settles (only a corrupted one can: the host leaves it odd only while
        it updates it) would make Linux spin for ever; the model gives up after `MAX_SPINS`
        retries in a row and panics, which stops this VM alone."""
        for _ in range(MAX_SPINS):
            seq, sf = self._factors(cpu)
            value = access(sf)
            if self._stable(cpu, seq):
                return value, sf, seq
        raise GuestPanic(f"arm-pv: the LPT record's sequence number has not settled after {MAX_SPINS} reads")

    def _read_pv(self, cpu: GuestCpu, reg: SysReg) -> int:
        native, sf, _ = self._consistently(cpu, lambda sf: cpu.mrs(reg))
        return fixedpoint.native_to_pv(native, sf)

    def read(self, cpu: GuestCpu, physical: bool = False) -> int:
        """The PV counter: native_to_pv(CNTVCT (or CNTPCT)), in the sequence retry loop."""
        self.stats.reads += 1
        return self._read_pv(cpu, CNTPCT_EL0 if physical else CNTVCT_EL0)

    def _native_deadline(self, pv: int, sf: ScaleFactors) -> int:
        if self.truncating_timer:
            return fixedpoint.pv_to_native(pv, sf)  # the RFC's conversion (can fire early)
        return fixedpoint.pv_to_native_deadline(pv, sf)

    def set_cval(self, cpu: GuestCpu, deadline: int, physical: bool = False) -> None:
        """Program the timer to fire once the PV counter reaches `deadline`, never before."""
        self.stats.timer_writes += 1
        deadline = min(max(deadline, 0), U64)
        reg = CNTP_CVAL_EL0 if physical else CNTV_CVAL_EL0
        self._consistently(cpu, lambda sf: cpu.msr(reg, self._native_deadline(deadline, sf)))

    def set_tval(self, cpu: GuestCpu, tval: int, physical: bool = False) -> None:
        """A TVAL write in PV ticks: deadline = PV counter + sign_extend32(tval), written as CVAL."""
        self.set_cval(cpu, self.read(cpu, physical) + sext32(tval), physical)

    def read_cval(self, cpu: GuestCpu, physical: bool = False) -> int:
        """The compare value as a PV count."""
        return self._read_pv(cpu, CNTP_CVAL_EL0 if physical else CNTV_CVAL_EL0)

    def read_tval(self, cpu: GuestCpu, physical: bool = False) -> int:
        """TVAL in PV ticks: (PV(CVAL) - PV counter) as 32 bits."""
        return (self.read_cval(cpu, physical) - self.read(cpu, physical)) & U32

    def set_event_stream(self, cpu: GuestCpu, index: int, evnti: int) -> int:
        """Enable the event stream for an EVNTI chosen at ``pv_freq``; returns the native EVNTI.

        The bit moves by the nearest power of two of native/pv (clamped to 0..15), and is moved
        again by :meth:`refresh` after a migration changes the native frequency.
        """
        self._evnti[index] = evnti
        return self._apply_evnt(cpu, index)

    def _apply_evnt(self, cpu: GuestCpu, index: int) -> int:
        def program(sf: ScaleFactors) -> int:
            native = fixedpoint.translate_evnti(self._evnti[index], sf)
            _write_evnt(cpu, native)
            return native

        native, _, self._evnt_seq[index] = self._consistently(cpu, program)
        return native

    def refresh(self, cpu: GuestCpu, index: int) -> None:
        """Per-CPU state derived from the factors (the event-stream divider) after a new start."""
        if index in self._evnti and self._evnt_seq.get(index) != self._sequence(cpu):
            self._apply_evnt(cpu, index)


Clocksource = ArchCounter | LptClock


def linux_evnti(freq: int) -> int:
    """The EVNTI Linux picks for its 10 kHz event stream on a counter of `freq` Hz.

    arch_timer_configure_evtstream: the closest power of two to ``freq / 10 kHz`` (by its top two
    bits), clamped to 0..15.
    """
    div = freq // ARCH_TIMER_EVT_STREAM_FREQ
    pos = div.bit_length()
    if pos > 1 and not div & (1 << (pos - 2)):
        pos -= 1
    return max(0, min(pos, 15))


def _write_evnt(cpu: GuestCpu, evnti: int) -> None:
    ctl = cpu.mrs(CNTKCTL_EL1) & ~CNTKCTL_EVNTI_MASK
    cpu.msr(CNTKCTL_EL1, (ctl | CNTKCTL_EVNTEN | (evnti & 0xF) << CNTKCTL_EVNTI_SHIFT) & U32)


def el0_mrs(cpu: GuestCpu, clock: Clocksource, reg: SysReg) -> int:
    """A user-space (EL0) ``mrs`` of CNTVCT, CNTPCT or CNTFRQ, as the hardware and kernel serve it.

    Enabled in CNTKCTL_EL1 (EL0VCTEN for CNTVCT, EL0PCTEN for CNTPCT, either for CNTFRQ): the
    raw register. Disabled: the access traps and the kernel emulates it with `clock` (LPT: the
    PV count, and ``pv_freq`` for CNTFRQ).
    """
    enable = EL0_COUNTER_ENABLE.get(reg)
    if enable is None:
        raise ValueError(f"EL0 access to {reg} is not a counter read")
    if cpu.mrs(CNTKCTL_EL1) & enable:
        return cpu.mrs(reg)
    if reg == CNTFRQ_EL0:
        return clock.freq
    return clock.read(cpu, physical=reg == CNTPCT_EL0)
