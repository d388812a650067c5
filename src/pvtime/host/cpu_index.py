"""Which CPUs of a host are idle, which have runnable tasks, and their loads, kept up to date as
tasks come and go, so that placing a task or finding a busiest CPU does not visit every CPU.

Linux keeps the same facts for the same reason: `nohz.idle_cpus_mask` and the idle cores of
`sched_domain_shared` (kernel/sched/fair.c: `nohz_balance_enter_idle`, `select_idle_cpu`), and
per-group sums built by `update_sg_lb_stats`. Here every change of a CPU's run queue (a task
queued, dequeued, delayed) or of what it runs calls `refresh`, which compares the CPU's state with
the copy taken last time and moves the CPU between the sets. The sets only speed up the searches;
every search returns the CPU the full scan in `pvtime.host.balance` would, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvtime.host.cpumask import Key, KeyedMasks, count_between, cpus_of, lowest, next_wrap

if TYPE_CHECKING:
    from pvtime.host.scheduler import Pcpu


class CpuIndex:
    """Idle and runnable CPUs as masks, loads grouped by value, the host's total load."""

    def __init__(self, cpus: Sequence[Pcpu]) -> None:
        self.cpus = cpus
        self.n = len(cpus)
        self.all = (1 << self.n) - 1
        self.idle = 0  # available_idle_cpu: nothing running, nothing runnable
        self.runnable = 0  # a runnable task queued or running (h_nr_runnable > 0)
        self.changed = self.all  # task count or load moved since the balancer last classified
        self.total_load = 0  # sum of the run queues' loads (sds->total_load)
        self.idle_by_stamp = KeyedMasks()  # idle CPUs by when they went idle
        # CPUs by (load, nr_runnable), for placing a new task when no CPU is idle; brought up to
        # date only then (for the CPUs in `_load_moved`), as forks are rare and changes are not.
        self._by_load = KeyedMasks()
        self._load_key: list[Key | None] = [None] * self.n
        self._load_moved = self.all
        # The state each CPU had at its last refresh: (nr_queued, load, nr_runnable, idle stamp
        # or None when not idle).
        self._seen: list[tuple[int, int, int, int | None]] = [(0, 0, 0, None)] * self.n
        for cpu in cpus:
            self.refresh(cpu)

    def refresh(self, cpu: Pcpu) -> None:
        """Take note of `cpu`'s current state (after any change of its queue or its task)."""
        rq = cpu.rq
        nr_queued, load = rq.nr_queued, rq.load
        nr = nr_queued - rq.nr_delayed
        stamp = (cpu.idle_stamp or 0) if nr == 0 and cpu.curr is None else None
        i = cpu.id
        old_queued, old_load, old_nr, old_stamp = self._seen[i]
        self._seen[i] = (nr_queued, load, nr, stamp)
        bit = 1 << i
        if old_queued != nr_queued or old_load != load:
            self.total_load += load - old_load
            self.changed |= bit
        if old_load != load or old_nr != nr:
            self._load_moved |= bit
        if (nr != 0) != (old_nr != 0):
            if nr:
                self.runnable |= bit
            else:
                self.runnable &= ~bit
        if stamp != old_stamp:
            if old_stamp is not None:
                self.idle_by_stamp.remove((old_stamp,), bit)
            if stamp is None:
                self.idle &= ~bit
            else:
                self.idle_by_stamp.add((stamp,), bit)
                self.idle |= bit

    # --- searches ------------------------------------------------------------------------------

    def select_idle_cpu(self, target: int, allowed: int, nr_scan: int) -> int | None:
        """select_idle_cpu with SIS_UTIL: the first idle CPU of `allowed` after `target` (walking
        up and wrapping around), if it is among the first `nr_scan` allowed CPUs of that walk."""
        cand = self.idle & allowed
        if not cand or nr_scan <= 0:
            return None
        start = target + 1 if target + 1 < self.n else 0
        c = next_wrap(cand, start)
        # its rank among the allowed CPUs of the walk target+1, ..., n-1, 0, ..., target
        if c > target:
            rank = count_between(allowed, target + 1, c)
        else:
            rank = count_between(allowed, target + 1, self.n - 1) + count_between(allowed, 0, c)
        return c if rank <= nr_scan else None

    def idlest(self, allowed: int) -> int:
        """sched_balance_find_dst_cpu on a one-CPU-per-group domain: the allowed idle CPU that
        went idle last (lowest id on a tie), else the least loaded allowed CPU (by load, then
        runnable tasks, then id)."""
        found = self.idle_by_stamp.greatest(allowed)
        if found is not None:
            return lowest(found[1])
        by_load, keys, seen = self._by_load, self._load_key, self._seen
        for c in cpus_of(self._load_moved):
            by_load.move(keys, c, (seen[c][1], seen[c][2]))
        self._load_moved = 0
        least = by_load.least(allowed)
        assert least is not None, "an empty affinity mask"
        return lowest(least[1])
