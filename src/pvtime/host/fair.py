"""The fair-scheduling arithmetic of one CPU's run queue, in the spirit of Linux CFS.

Facts carried over from kernel/sched/fair.c (before EEVDF, Linux 6.5 and earlier):
- every runnable task has a `vruntime`, its CPU time scaled by NICE_0_LOAD / weight; the run
  queue always runs the task with the smallest one;
- a task's ideal slice is its weight's share of the scheduling period, which is
  `latency` for up to `latency / min_granularity` tasks and `nr * min_granularity` beyond;
- a waking task is placed at `max(its vruntime, min_vruntime - latency / 2)` (GENTLE_FAIR_SLEEPERS:
  a sleeper gets at most half a period of credit), a new task at `min_vruntime + its vslice`
  (START_DEBIT);
- a woken task preempts the running one when the running one's vruntime exceeds the woken
  one's by more than the wake-up granularity (scaled to the woken task's weight);
- the tunables scale with 1 + log2(min(ncpus, 8)) (SCHED_TUNABLESCALING_LOG).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvtime.host.weights import NICE_0_LOAD, calc_delta_fair, weight_of

if TYPE_CHECKING:
    from pvtime.host.task import Task, TaskBody

MSEC = 1_000_000


@dataclass(frozen=True)
class SchedTunables:
    """sysctl_sched_{latency,min_granularity,wakeup_granularity}, before CPU-count scaling."""

    latency_ns: int = 6 * MSEC
    min_granularity_ns: int = 750_000
    wakeup_granularity_ns: int = 1 * MSEC

    def __post_init__(self) -> None:
        for name in ("latency_ns", "min_granularity_ns", "wakeup_granularity_ns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def scaled(self, ncpus: int) -> SchedTunables:
        """The values Linux uses on `ncpus` CPUs: each times 1 + ilog2(min(ncpus, 8))."""
        factor = 1 + (min(max(ncpus, 1), 8).bit_length() - 1)
        return SchedTunables(self.latency_ns * factor, self.min_granularity_ns * factor,
                             self.wakeup_granularity_ns * factor)


@dataclass(eq=False)
class SchedEntity:
    """A task as the scheduler sees it: its body, weight, vruntime, allowed CPUs, last CPU."""

    task: Task
    body: TaskBody
    nice: int = 0
    allowed: tuple[int, ...] = ()  # sorted CPU ids the task may run on (its affinity mask)
    weight: int = field(init=False)
    vruntime: int = 0
    cpu: int | None = None  # the CPU it last ran or queued on (task_cpu)
    on_rq: bool = False  # queued or running on `cpu`'s run queue
    wake_gen: int = 0  # invalidates a pending timed wake-up when the task is woken otherwise
    wake_pending: bool = False  # an explicit wake-up arrived while it was still on the CPU
    sleep_until: int | None = None  # pending timed wake-up, for the segment cap

    def __post_init__(self) -> None:
        self.weight = weight_of(self.nice)

    def __repr__(self) -> str:
        return f"SchedEntity({self.task.name}, v={self.vruntime}, cpu={self.cpu})"


class CfsRunQueue:
    """One CPU's fair run queue: the queued entities ordered by vruntime, plus the running one.

    The running entity (`curr`) is not in the ordered list, as in Linux where it leaves the
    rbtree while it runs; its vruntime is brought up to date by `update_curr`.
    """

    def __init__(self, tunables: SchedTunables) -> None:
        self.tunables = tunables
        self.min_vruntime = 0
        self.load = 0  # sum of weights of all entities on this queue, curr included
        self.nr_running = 0  # entities on this queue, curr included
        self.curr: SchedEntity | None = None
        self._queue: list[tuple[int, int, SchedEntity]] = []  # (vruntime, tid, entity)

    def __len__(self) -> int:
        return self.nr_running

    def queued(self) -> list[SchedEntity]:
        """The waiting entities, leftmost first."""
        return [e for _, _, e in self._queue]

    # --- the ordered queue ---------------------------------------------------------------

    def enqueue(self, se: SchedEntity) -> None:
        """Add a runnable entity (not running) to the queue."""
        bisect.insort(self._queue, (se.vruntime, se.task.tid, se))
        if not se.on_rq:
            se.on_rq = True
            self.load += se.weight
            self.nr_running += 1

    def remove(self, se: SchedEntity) -> None:
        """Take a waiting entity off the queue (migration); it is no longer on this run queue."""
        i = bisect.bisect_left(self._queue, (se.vruntime, se.task.tid))
        if i >= len(self._queue) or self._queue[i][2] is not se:
            raise RuntimeError(f"{se!r} is not queued here")
        del self._queue[i]
        se.on_rq = False
        self.load -= se.weight
        self.nr_running -= 1

    def leftmost(self) -> SchedEntity | None:
        """The waiting entity with the smallest vruntime."""
        return self._queue[0][2] if self._queue else None

    def pick(self) -> SchedEntity | None:
        """Remove the leftmost waiting entity from the ordered list and make it `curr`."""
        if not self._queue:
            self.curr = None
            return None
        se = self._queue.pop(0)[2]
        self.curr = se
        return se

    def put_prev(self, se: SchedEntity) -> None:
        """The running entity stops running but stays runnable: back into the ordered list."""
        if self.curr is se:
            self.curr = None
        bisect.insort(self._queue, (se.vruntime, se.task.tid, se))

    def dequeue_curr(self, se: SchedEntity) -> None:
        """The running entity blocks or exits: it leaves this run queue."""
        if self.curr is se:
            self.curr = None
        se.on_rq = False
        self.load -= se.weight
        self.nr_running -= 1
        self.update_min_vruntime()

    # --- arithmetic ----------------------------------------------------------------------

    def update_curr(self, se: SchedEntity, delta_exec_ns: int) -> None:
        """Charge `delta_exec_ns` of CPU time to the running entity."""
        se.vruntime += calc_delta_fair(delta_exec_ns, se.weight)
        self.update_min_vruntime()

    def update_min_vruntime(self) -> None:
        """min_vruntime follows the smallest vruntime on the queue and never goes back."""
        candidates = []
        if self.curr is not None and self.curr.on_rq:
            candidates.append(self.curr.vruntime)
        if self._queue:
            candidates.append(self._queue[0][0])
        if candidates:
            self.min_vruntime = max(self.min_vruntime, min(candidates))

    def sched_period(self, nr: int) -> int:
        """__sched_period: latency, stretched when more tasks than latency/min_granularity run."""
        t = self.tunables
        nr_latency = t.latency_ns // t.min_granularity_ns
        return nr * t.min_granularity_ns if nr > nr_latency else t.latency_ns

    def sched_slice(self, se: SchedEntity) -> int:
        """The entity's ideal run time per period: its weight's share of the period."""
        nr, load = self.nr_running, self.load
        if not se.on_rq:
            nr, load = nr + 1, load + se.weight
        return max(1, self.sched_period(nr) * se.weight // max(load, 1))

    def place(self, se: SchedEntity, *, initial: bool) -> None:
        """place_entity: a new task starts a vslice behind; a sleeper gets half a latency of credit."""
        vruntime = self.min_vruntime
        if initial:
            vruntime += calc_delta_fair(self.sched_slice(se), se.weight)
            se.vruntime = vruntime
            return
        vruntime -= self.tunables.latency_ns // 2
        se.vruntime = max(se.vruntime, vruntime)

    def wakeup_preempts(self, curr_vruntime: int, woken: SchedEntity) -> bool:
        """wakeup_preempt_entity(curr, woken) == 1: the running entity (at `curr_vruntime`) is
        ahead of the woken one by more than the wake-up granularity, scaled to the woken weight."""
        vdiff = curr_vruntime - woken.vruntime
        if vdiff <= 0:
            return False
        return vdiff > calc_delta_fair(self.tunables.wakeup_granularity_ns, woken.weight)

    def migrate_vruntime(self, se: SchedEntity, dst: CfsRunQueue) -> None:
        """Keep the entity's lag relative to min_vruntime when it moves to another CPU."""
        se.vruntime = se.vruntime - self.min_vruntime + dst.min_vruntime


__all__ = ["CfsRunQueue", "NICE_0_LOAD", "SchedEntity", "SchedTunables"]
