"""Live migration inside a simulation: a `LiveMigration` driven in virtual time between two hosts.

The hosts share one event core (one timeline), each with its own scheduler. At ``at_ns`` the
driver runs pre-copy rounds while the source VM keeps running (each round takes the time its
bytes need on the link), then pauses the source, makes the final part -- counters read at the
instant the source's vCPUs last executed, since a scheduler segment is simulated ahead of the
event loop -- and restores the VM on the destination after the final part's transfer time plus
a fixed set-up cost. The destination's vCPU threads are started by the caller's ``start`` hook
(the scenario runner registers them with its recorder). If the restore fails, the source is
resumed, its threads are woken, and the error is kept in ``error``: the source VM keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pvtime.host import EventCore, Scheduler
from pvtime.host.events import PRIO_WAKE
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, VcpuThread
from pvtime.vmm.migration import LiveMigration, MigrationError, ModelHandover

StartHook = Callable[[Machine, int], list[VcpuThread]]


@dataclass(frozen=True)
class LinkSpec:
    """The migration link and policy."""

    bandwidth_bytes_per_s: int = 1_250_000_000  # 10 Gbit/s
    setup_ns: int = 1_000_000  # fixed cost of the switch-over (device state, network, resume)
    max_rounds: int = 5
    converge_pages: int = 64
    count_downtime: bool = True  # the guest's counters keep real time across the pause


class MigrationDriver:
    """One migration of `machine` (its vCPU `threads` on `src_sched`) to `dst_kvm` at `at_ns`."""

    def __init__(self, core: EventCore, machine: Machine, threads: list[VcpuThread], src_sched: Scheduler,
                 dst_kvm: Kvm, start: StartHook, *, at_ns: int, link: LinkSpec | None = None,
                 handover: ModelHandover | None = None) -> None:
        self.core = core
        self.machine = machine
        self.threads = threads
        self.src_sched = src_sched
        self.start = start
        self.link = link or LinkSpec()
        self.migration = LiveMigration(machine, dst_kvm, bandwidth_bytes_per_s=self.link.bandwidth_bytes_per_s,
                                       max_rounds=self.link.max_rounds, converge_pages=self.link.converge_pages,
                                       handover=handover, count_downtime=self.link.count_downtime)
        self.error: str | None = None
        self.result: Machine | None = None
        self.dest_threads: list[VcpuThread] = []
        self.wall_s = 0.0  # wall time spent in the migration's own steps (progress/bench only)
        core.at(at_ns, PRIO_WAKE, self._round)

    def _timed(self, fn: Callable[[], int]) -> int:
        t0 = time.perf_counter()  # wall clock for the cost figure only; never feeds virtual time
        try:
            return fn()
        finally:
            self.wall_s += time.perf_counter() - t0

    def _round(self) -> None:
        if self.machine.stopped is not None:
            self.error = f"source stopped before the migration: {self.machine.stopped}"
            return
        nbytes = self._timed(self.migration.precopy)
        after = self.core.now + self.migration.transfer_ns(nbytes)
        self.core.at(after, PRIO_WAKE, self._round if self.migration.want_more_rounds() else self._stop)

    def _stop(self) -> None:
        last = max((t.last_ns for t in self.threads), default=0)
        now = self.core.now
        nbytes = self._timed(lambda: self.migration.stop_and_copy(now, last))
        done = max(now, last) + self.migration.transfer_ns(nbytes) + self.link.setup_ns
        self.core.at(done, PRIO_WAKE, self._complete)

    def _complete(self) -> None:
        now = self.core.now
        try:
            t0 = time.perf_counter()
            machine = self.migration.complete(now)
            self.wall_s += time.perf_counter() - t0
        except MigrationError as err:
            self.error = str(err)
            for thread in self.threads:  # the source resumes where it paused
                if thread.task is not None:
                    self.src_sched.wake(thread.task)
            return
        self.result = machine
        self.dest_threads = self.start(machine, now)
