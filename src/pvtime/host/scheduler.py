"""Physical CPUs with fair run queues, and the scheduler that moves tasks on and off them.

The scheduler follows Linux where it matters for steal: CFS picking and slicing
(`pvtime.host.fair`), wake-up placement (`select_task_rq`: the previous CPU if idle, else an idle
CPU the task may use, else the previous CPU), wake-up preemption, new-idle pulling, affinity, and
schedstat's enqueue/arrive/depart calls at exactly the moments Linux makes them.

How time advances: when a CPU switches a task in, the task's body executes at once for the whole
segment -- until its slice ends, it blocks, or a wake-up already known to target this CPU is due.
Segments of different CPUs are executed in virtual-time order. A wake-up that reaches a CPU whose
current segment has already been simulated past the wake-up time is queued at its exact time (so
`run_delay` stays exact), and its preemption takes effect at that segment's end, as if the
reschedule IPI were late; `Scheduler.late_preemptions` counts these.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pvtime.host.events import PRIO_CPU, PRIO_WAKE, EventCore
from pvtime.host.fair import CfsRunQueue, SchedEntity, SchedTunables
from pvtime.host.host import Host
from pvtime.host.task import Slice, Step, Task, TaskBody, TaskState
from pvtime.host.weights import calc_delta_fair

MSEC = 1_000_000


class SchedObserver(Protocol):
    """Receives what happened on the host, for metrics and traces."""

    def on_segment(self, host: Host, cpu: int, task: Task, start_ns: int, end_ns: int,
                   switched_in: bool) -> None:
        """`task` ran on `cpu` from start to end; `switched_in` when this began a timeslice."""
        ...

    def on_wake(self, host: Host, task: Task, at_ns: int, cpu: int) -> None:
        """`task` became runnable on `cpu`'s run queue at `at_ns`."""
        ...


@dataclass(eq=False)
class Pcpu:
    """One physical CPU: its run queue and what it is executing."""

    id: int
    rq: CfsRunQueue
    curr: SchedEntity | None = None
    seg_start: int = 0  # the executing segment's start ...
    seg_end: int = 0  # ... and end (already simulated)
    slice_end: int = 0  # when curr's ideal slice is used up
    step: Step | None = None  # what curr's body reported at seg_end
    need_resched: bool = False
    decision_posted: bool = False
    busy_ns: int = 0
    # Timed wake-ups of tasks that last ran here: (time, gen, tid, entity); stale ones are skipped.
    wakes: list[tuple[int, int, int, SchedEntity]] = field(default_factory=list)


class Scheduler:
    """The scheduler of one `Host`: its CPUs, its tasks, driven by an `EventCore`."""

    def __init__(self, host: Host, core: EventCore, tunables: SchedTunables | None = None, *,
                 end_ns: int = 1 << 62, max_segment_ns: int = 50 * MSEC,
                 observer: SchedObserver | None = None) -> None:
        if max_segment_ns <= 0:
            raise ValueError(f"max_segment_ns must be positive, got {max_segment_ns}")
        self.host = host
        self.core = core
        self.tunables = (tunables or SchedTunables()).scaled(host.ncpus)
        self.end_ns = end_ns
        self.max_segment_ns = max_segment_ns
        self.observer = observer
        self.cpus = [Pcpu(i, CfsRunQueue(self.tunables)) for i in range(host.ncpus)]
        self.entities: dict[int, SchedEntity] = {}
        self._idle: set[int] = set(range(host.ncpus))
        self.segments = 0  # body executions
        self.switches = 0  # context switches (schedule-ins)
        self.late_preemptions = 0

    # --- tasks ---------------------------------------------------------------------------

    def add(self, task: Task, body: TaskBody, *, nice: int = 0, cpus: Iterable[int] | None = None,
            start_ns: int | None = None) -> SchedEntity:
        """Make `task` (sleeping, from `Host.spawn`) runnable at `start_ns` running `body` (fork)."""
        allowed = tuple(sorted(set(range(self.host.ncpus) if cpus is None else cpus)))
        if not allowed:
            raise ValueError(f"task {task.name}: empty CPU affinity")
        bad = [c for c in allowed if not 0 <= c < self.host.ncpus]
        if bad:
            raise ValueError(f"task {task.name}: CPU(s) {bad} not on {self.host.name} "
                             f"(CPUs 0..{self.host.ncpus - 1})")
        if task.tid in self.entities:
            raise ValueError(f"task {task.name} is already scheduled")
        se = SchedEntity(task, body, nice=nice, allowed=allowed)
        self.entities[task.tid] = se
        self.core.at(self.core.now if start_ns is None else start_ns, PRIO_WAKE, lambda: self._fork(se))
        return se

    def wake(self, task: Task) -> None:
        """Wake a blocked task now (host time), e.g. a powered-off vCPU turned on by PSCI CPU_ON."""
        se = self.entities[task.tid]
        at = max(self.host.now_ns(), self.core.now)
        self.core.at(at, PRIO_WAKE, lambda: self._explicit_wake(se, at))

    def finish(self) -> None:
        """End of the run: switch out whatever is on a CPU at the end of its simulated segment."""
        for cpu in self.cpus:
            se = cpu.curr
            if se is not None and se.task.state is TaskState.RUNNING:
                se.task.depart(cpu.seg_end, runnable=True)

    def nr_running(self, cpu: int) -> int:
        """Runnable tasks on `cpu`, the running one included."""
        return self.cpus[cpu].rq.nr_running

    # --- wake-ups and placement ----------------------------------------------------------

    def _fork(self, se: SchedEntity) -> None:
        now = self.core.now
        target = self._select_cpu(se, fork=True)
        rq = self.cpus[target].rq
        se.cpu = target
        rq.place(se, initial=True)
        self._activate(se, target, now)

    def _timed_wake(self, se: SchedEntity, gen: int) -> None:
        if se.wake_gen == gen and se.task.state is TaskState.SLEEPING:
            self._wakeup(se, self.core.now)

    def _explicit_wake(self, se: SchedEntity, at: int) -> None:
        if se.task.state is TaskState.SLEEPING:
            self._wakeup(se, at)
            return
        cpu = self.cpus[se.cpu] if se.cpu is not None else None
        # Woken while its blocking segment is simulated but not yet ended: it will not block.
        if cpu is not None and cpu.curr is se and cpu.step is not None \
                and cpu.step.state is TaskState.SLEEPING and cpu.seg_end >= at:
            se.wake_pending = True

    def _wakeup(self, se: SchedEntity, now: int) -> None:
        """try_to_wake_up: choose a CPU, place the sleeper, queue it, maybe preempt."""
        se.wake_gen += 1
        se.sleep_until = None
        target = self._select_cpu(se, fork=False)
        if se.cpu is not None and se.cpu != target:
            self.cpus[se.cpu].rq.migrate_vruntime(se, self.cpus[target].rq)
        se.cpu = target
        self.cpus[target].rq.place(se, initial=False)
        self._activate(se, target, now)

    def _activate(self, se: SchedEntity, target: int, now: int) -> None:
        self.host.clock_ns = max(self.host.clock_ns, now)
        se.task.enqueue(now)
        cpu = self.cpus[target]
        cpu.rq.enqueue(se)
        self._idle.discard(target)
        if self.observer is not None:
            self.observer.on_wake(self.host, se.task, now, target)
        if cpu.curr is None:
            self._post_decision(cpu, now)
            return
        curr = cpu.curr
        # curr's vruntime as of `now`: its segment is charged only when it ends.
        ran = max(0, min(now, cpu.seg_end) - cpu.seg_start)
        projected = curr.vruntime + calc_delta_fair(ran, curr.weight)
        if cpu.rq.wakeup_preempts(projected, se):
            cpu.need_resched = True
            if cpu.seg_end > now:
                self.late_preemptions += 1

    def _select_cpu(self, se: SchedEntity, *, fork: bool) -> int:
        """select_task_rq_fair, reduced to what shapes steal: prefer an idle allowed CPU."""
        allowed = se.allowed
        prev = se.cpu
        if not fork and prev is not None and prev in self._idle and prev in allowed:
            return prev
        if self._idle:
            idle = [c for c in allowed if c in self._idle]
            if idle:
                base = prev if prev is not None else 0
                n = self.host.ncpus
                return min(idle, key=lambda c: (c - base) % n)
        if not fork and prev is not None and prev in allowed:
            return prev
        return min(allowed, key=lambda c: (self.cpus[c].rq.nr_running, c))

    # --- scheduling decisions ------------------------------------------------------------

    def _post_decision(self, cpu: Pcpu, at: int) -> None:
        if not cpu.decision_posted:
            cpu.decision_posted = True
            self.core.at(at, PRIO_CPU, lambda: self._decide(cpu))

    def _decide(self, cpu: Pcpu) -> None:
        """__schedule on `cpu` at the end of its segment (or when work arrives while idle)."""
        now = self.core.now
        self.host.clock_ns = max(self.host.clock_ns, now)
        cpu.decision_posted = False
        rq = cpu.rq
        prev = cpu.curr
        if prev is not None:
            step = cpu.step
            assert step is not None
            rq.update_curr(prev, now - cpu.seg_start)
            state = step.state
            if state is TaskState.SLEEPING and prev.wake_pending:
                state = TaskState.QUEUED
            prev.wake_pending = False
            if state is TaskState.EXITED:
                rq.dequeue_curr(prev)
                prev.task.exit(now)
                prev = None
            elif state is TaskState.SLEEPING:
                rq.dequeue_curr(prev)
                prev.task.depart(now, runnable=False)
                if step.wake_at_ns is not None:
                    self._arm_wake(prev, max(step.wake_at_ns, now))
                prev = None
            elif not cpu.need_resched and now < cpu.slice_end:
                self._execute(cpu, prev, now, switched_in=False)  # the slice goes on
                return
            elif rq.nr_running == 1:
                cpu.need_resched = False
                cpu.slice_end = now + self.max_segment_ns  # alone: nothing to share with
                self._execute(cpu, prev, now, switched_in=False)
                return
            else:
                rq.put_prev(prev)
        cpu.need_resched = False
        nxt = rq.pick()
        if nxt is None:
            nxt = self._pull(cpu)
        if nxt is None:
            cpu.curr = None
            self._idle.add(cpu.id)
            return
        if nxt is not prev:
            if prev is not None:
                prev.task.depart(now, runnable=True)
            nxt.task.arrive(now)
            self.switches += 1
        slice_ns = self.max_segment_ns if rq.nr_running == 1 else rq.sched_slice(nxt)
        cpu.slice_end = now + slice_ns
        self._execute(cpu, nxt, now, switched_in=nxt is not prev)

    def _arm_wake(self, se: SchedEntity, at: int) -> None:
        gen = se.wake_gen
        se.sleep_until = at
        if se.cpu is not None:
            heapq.heappush(self.cpus[se.cpu].wakes, (at, gen, se.task.tid, se))
        self.core.at(at, PRIO_WAKE, lambda: self._timed_wake(se, gen))

    def _next_known_wake(self, cpu: Pcpu, now: int) -> int | None:
        """The earliest pending timed wake-up of a task that last ran on this CPU."""
        wakes = cpu.wakes
        while wakes:
            at, gen, _, se = wakes[0]
            if se.wake_gen != gen or se.cpu != cpu.id or at < now or se.sleep_until != at:
                heapq.heappop(wakes)
                continue
            return at if at > now else None
        return None

    def _pull(self, cpu: Pcpu) -> SchedEntity | None:
        """newidle_balance: take a waiting task allowed here from the busiest CPU."""
        best: tuple[int, int] | None = None
        for other in self.cpus:
            if other is cpu or other.rq.nr_running < 2:
                continue
            if best is None or other.rq.nr_running > best[0]:
                best = (other.rq.nr_running, other.id)
        if best is None:
            return None
        src = self.cpus[best[1]]
        for se in src.rq.queued():
            if cpu.id in se.allowed:
                src.rq.remove(se)
                src.rq.migrate_vruntime(se, cpu.rq)
                se.cpu = cpu.id
                cpu.rq.enqueue(se)
                return cpu.rq.pick()
        return None

    def _execute(self, cpu: Pcpu, se: SchedEntity, now: int, *, switched_in: bool) -> None:
        """Run `se`'s body from `now` to its segment's end, and post the decision there."""
        cpu.curr = se
        self._idle.discard(cpu.id)
        end = min(cpu.slice_end, self.end_ns)
        known = self._next_known_wake(cpu, now)
        if known is not None and known < end:
            end = known
        if end <= now:
            cpu.seg_start = cpu.seg_end = now
            cpu.step = Step(TaskState.QUEUED)
            return  # the run is over: stay on the CPU, decide nothing more
        slice_ = Slice(se.task, now, end, now)
        with self.host.running(slice_):
            step = se.body.step(slice_)
        stop = slice_.now_ns
        if stop == now and step.state is TaskState.QUEUED:
            raise RuntimeError(f"task {se.task.name} returned runnable without using any CPU time")
        cpu.seg_start, cpu.seg_end, cpu.step = now, stop, step
        cpu.busy_ns += stop - now
        self.segments += 1
        if self.observer is not None:
            self.observer.on_segment(self.host, cpu.id, se.task, now, stop, switched_in)
        self._post_decision(cpu, stop)

