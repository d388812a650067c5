"""A small *resident* model guest: it watches its clock, and keeps all its state in guest RAM.

Every `period_ns` of CPU work it reads the counter through its clocksource (LPT when offered,
else the architected counter) and updates a log in guest memory: how many reads, the last value,
the frequency it was read at, and how many times the value stepped backwards. Nothing lives in
Python between steps except what `main` re-derives from RAM and from the hypervisor (the LPT
probe), so restarting `main` at any point continues the program: this is what lets a VMM migrate
it as bytes, between processes too (``resident_name``; pvtime.vmm.migration).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pvtime.abi.sysregs import CNTV_CTL_EL0
from pvtime.guest.lpt import ArchCounter, Clocksource, LptClock
from pvtime.guest.machine import Compute, CpuProgram, GuestCpu

_LOG = struct.Struct("<QQQQQ")  # reads, last value, frequency, backward steps, restarts


@dataclass(frozen=True)
class WatchLog:
    """The program's log, as it sits in guest RAM."""

    reads: int
    last: int
    freq: int
    backsteps: int
    restarts: int

    @classmethod
    def unpack(cls, data: bytes) -> WatchLog:
        """From the log's bytes."""
        return cls(*_LOG.unpack_from(data))

    SIZE = _LOG.size


class ClockWatch:
    """A `ModelProgram` for vCPU 0 (others power off); its state is `WatchLog` at `log_addr`."""

    resident_name = "clockwatch"

    def __init__(self, log_addr: int, period_ns: int = 100_000, lpt: bool = True) -> None:
        if log_addr % 8 or period_ns <= 0:
            raise ValueError(f"log_addr must be 8-aligned and period_ns positive, got {log_addr:#x}, {period_ns}")
        self.log_addr = log_addr
        self.period_ns = period_ns
        self.lpt = lpt
        self.messages: list[str] = []

    def resident_options(self) -> dict[str, Any]:
        """What re-creates this program elsewhere (its state is in RAM, not here)."""
        return {"log_addr": self.log_addr, "period_ns": self.period_ns, "lpt": self.lpt}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ClockWatch:
        """The program from `resident_options()`."""
        return cls(int(options["log_addr"]), int(options["period_ns"]), bool(options["lpt"]))

    def main(self, cpu: GuestCpu, index: int) -> CpuProgram:
        """Probe the clock (again after a restore), then read it every period, logging to RAM."""
        if index != 0:
            return
        clock: Clocksource | None = LptClock.probe(cpu, self.messages) if self.lpt else None
        if clock is None:
            clock = ArchCounter(cpu)
        clock.cpu_init(cpu)
        log = WatchLog.unpack(cpu.read(self.log_addr, WatchLog.SIZE))
        restarts = log.restarts + (1 if log.reads else 0)
        cpu.write(self.log_addr, _LOG.pack(log.reads, log.last, log.freq, log.backsteps, restarts))
        while True:
            value = clock.read(cpu)
            log = WatchLog.unpack(cpu.read(self.log_addr, WatchLog.SIZE))
            back = log.backsteps + (1 if log.reads and value < log.last else 0)
            cpu.write(self.log_addr, _LOG.pack(log.reads + 1, value, clock.freq, back, log.restarts))
            yield Compute(self.period_ns)

    def irq(self, cpu: GuestCpu, index: int) -> None:
        """It arms no timer; mask whatever is asserted."""
        cpu.msr(CNTV_CTL_EL0, 0)
