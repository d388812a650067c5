"""Physical CPUs, their scheduler tick, and the core that moves tasks on and off them.

The core follows kernel/sched/core.c and fair.c at tag v6.18 where it matters for steal:
`try_to_wake_up` (CPU selection, placement, `wakeup_preempt`), `sched_tick` every 1/HZ on each
busy CPU (NO_HZ_IDLE: an idle CPU does not tick), `__schedule` (block, pick, switch), load
balancing (`pvtime.host.balance`), and schedstat's enqueue/arrive/depart calls at exactly the
moments Linux makes them. The fair policy's arithmetic is per CPU in its run queue:
`pvtime.host.eevdf` (Linux >= 6.6) or `pvtime.host.cfs` (Linux <= 6.5). As in Linux, the running
task is charged (`update_curr`) before any enqueue, placement, preemption check or pick.

How time advances. A task's body executes synchronously, ahead of the event loop, for one
*segment*, which never runs past the next event that concerns its CPU: the host's tick (the
ticks of all CPUs are aligned), a timed wake-up of a task that went to sleep on that CPU (its
timer fires there, so the wake-up lands there or on an idle CPU), the end of a polling task's
slice, any public event on the core (a VMM action, a migration step, a task starting later:
these bound every CPU), and the end of the run (`end_ns`). Where a caller stops the event loop
(`EventCore.run` in steps, for a progress display or a sample) bounds nothing: it would be a
decision point Linux does not have. Events of one instant are processed in order -- wake-ups,
CPU clocks (ticks, segment ends), then each CPU's scheduling decision followed by its task's
execution -- so a decision sees the wake-ups and ticks of its instant. A body that wakes another
task (PSCI CPU_ON) ends its segment at that instant, so the wake-up is processed at its exact time
and lands on the waker's CPU, an idle one, or the task's previous CPU.

In that last case the previous CPU may be busy with a segment already simulated past the
wake-up: guest code executed cannot be undone. The wake-up is still queued at its exact time
(`run_delay` stays exact) and its preemption acts at that segment's end, at most a tick later.
The same holds when a newly idle CPU pulls a task from a busy CPU mid-segment and the charge
(`update_curr`) this does on the source finds its running task's slice over: Linux would
reschedule the source at once, pvtime at its segment's end. `Scheduler.late_reschedules` counts
both; summary.json reports the count.

No internal limit changes results: `max_segment_ns` only splits a segment's execution into
several calls of the body, which no other CPU can see.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from pvtime.host.balance import Balancer
from pvtime.host.cfs import CfsRunQueue
from pvtime.host.cpu_index import CpuIndex
from pvtime.host.eevdf import EevdfRunQueue
from pvtime.host.entity import SchedEntity
from pvtime.host.events import PRIO_CPU, PRIO_RESCHED, PRIO_WAKE, EventCore
from pvtime.host.host import Host
from pvtime.host.runqueue import Enqueue, FairRunQueue
from pvtime.host.sched_config import SchedConfig
from pvtime.host.task import Slice, Step, Task, TaskBody, TaskState

COLD = -(1 << 62)  # a last-ran time no cache remembers


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
    """One physical CPU: its run queue, what it is executing, and its balancing state."""

    id: int
    rq: FairRunQueue
    curr: SchedEntity | None = None
    seg_start: int = 0  # the last segment's start ...
    seg_end: int = 0  # ... and end (simulated)
    in_flight: bool = False  # that segment ends after the event being processed
    step: Step | None = None  # what curr's body reported at seg_end (None: nothing yet)
    switched_in: bool = False  # the next segment begins a timeslice
    need_resched: bool = False  # TIF_NEED_RESCHED
    lazy_resched: bool = False  # TIF_NEED_RESCHED_LAZY, acted on at the next tick
    service_posted: bool = False
    ends_at_tick: bool = False  # the running segment ends at the next tick, which handles it
    busy_ns: int = 0
    # Balancing (the CPU's own copy of its sched_domain, as in Linux).
    idle_stamp: int | None = 0  # when it last went idle (None while busy)
    avg_idle: int = 1_000_000  # rq->avg_idle, starts at 2 * sysctl_sched_migration_cost
    next_balance: int = 0
    last_balance: int = 0
    balance_interval_ms: int = 0
    nr_balance_failed: int = 0
    util: float = 0.0  # PELT-like utilisation (0..1024), as of util_time
    util_time: int = 0
    util_busy: int = 0  # busy_ns as of util_time
    # Timed wake-ups of tasks that went to sleep here: (time, generation, tid, entity).
    wakes: list[tuple[int, int, int, SchedEntity]] = field(default_factory=list)

    def is_idle(self) -> bool:
        """available_idle_cpu: nothing running and nothing runnable."""
        return self.curr is None and self.rq.nr_runnable == 0


class Scheduler:
    """The scheduler of one `Host`: its CPUs, its tasks, driven by an `EventCore`."""

    def __init__(self, host: Host, core: EventCore, config: SchedConfig | None = None, *,
                 end_ns: int = 1 << 62, max_segment_ns: int | None = None,
                 observer: SchedObserver | None = None) -> None:
        if max_segment_ns is not None and max_segment_ns <= 0:
            raise ValueError(f"max_segment_ns must be positive, got {max_segment_ns}")
        self.host = host
        host.set_waker(self.wake)
        self.core = core
        self.config = config or SchedConfig()
        self.tick_ns = self.config.tick_ns
        self.end_ns = end_ns
        self.max_segment_ns = max_segment_ns
        self.observer = observer
        self.cpus = [Pcpu(i, self._new_rq(i)) for i in range(host.ncpus)]
        self._all_cpus = tuple(range(host.ncpus))
        self.index = CpuIndex(self.cpus)
        for cpu in self.cpus:
            cpu.rq.on_change = partial(self.index.refresh, cpu)
        self.balancer = Balancer(self)
        self.entities: dict[int, SchedEntity] = {}
        self._tick_posted = False
        self._next_tick = 1 << 62  # when the posted tick fires
        self._executing: Pcpu | None = None
        self.segments = 0  # body executions
        self.switches = 0  # context switches (schedule-ins)
        self.ticks = 0  # sched_tick calls
        self.late_reschedules = 0  # reschedule requests for a CPU whose segment had passed them

    def _new_rq(self, cpu: int) -> FairRunQueue:
        c = self.config
        n = self.host.ncpus
        if c.policy == "eevdf":
            return EevdfRunQueue(cpu, c.eevdf.scaled(n), c.tick_ns)
        return CfsRunQueue(cpu, c.cfs.scaled(n))

    # --- tasks ---------------------------------------------------------------------------

    def add(self, task: Task, body: TaskBody, *, nice: int = 0, cpus: Iterable[int] | None = None,
            start_ns: int | None = None) -> SchedEntity:
        """Make `task` (sleeping, from `Host.spawn`) runnable at `start_ns` running `body` (fork)."""
        if cpus is None:
            allowed = self._all_cpus  # one tuple shared by every unpinned task
        else:
            allowed = tuple(sorted(set(cpus)))
            if not allowed:
                raise ValueError(f"task {task.name}: empty CPU affinity")
            bad = [c for c in allowed if not 0 <= c < self.host.ncpus]
            if bad:
                raise ValueError(f"task {task.name}: CPU(s) {bad} not on {self.host.name} "
                                 f"(CPUs 0..{self.host.ncpus - 1})")
        if task.tid in self.entities:
            raise ValueError(f"task {task.name} is already scheduled")
        se = SchedEntity(task, body, nice=nice, allowed=allowed,
                         polls_cpu_clock=getattr(body, "polls_cpu_clock", False))
        self.entities[task.tid] = se
        at = self.core.now if start_ns is None else max(start_ns, self.core.now)
        self.core.at(at, PRIO_WAKE, lambda: self._fork(se))
        return se

    def wake(self, task: Task) -> None:
        """Wake a blocked task now, e.g. a powered-off vCPU turned on by PSCI CPU_ON.

        Called from a running body (guest code on a CPU of this host), the wake-up happens at the
        body's current time and ends its segment there; otherwise at the event loop's time.
        """
        se = self.entities[task.tid]
        current = self.host.current
        waker = self._executing
        if current is not None and waker is not None:
            at = current.now_ns
            if task.state is TaskState.SLEEPING:
                current.deadline_ns = at  # the waker stops here: the wake-up is processed now
            waker_id: int | None = waker.id
        else:
            at, waker_id = self.core.now, None
        self.core.at(at, PRIO_WAKE, lambda: self._explicit_wake(se, at, waker_id), private=True)

    def finish(self) -> None:
        """End of the run: switch out whatever is on a CPU at the end of its simulated segment."""
        for cpu in self.cpus:
            se = cpu.curr
            if se is not None and se.task.state is TaskState.RUNNING:
                se.task.depart(cpu.seg_end if cpu.in_flight else max(cpu.seg_end, self.core.now), runnable=True)

    def nr_running(self, cpu: int) -> int:
        """Runnable tasks on `cpu`, the running one included."""
        return self.cpus[cpu].rq.nr_runnable

    # --- wake-ups --------------------------------------------------------------------------

    def _fork(self, se: SchedEntity) -> None:
        """wake_up_new_task: the idlest allowed CPU, initial placement, a preemption check."""
        now = self.core.now
        target = self.balancer.select_cpu(se, waker=None, fork=True)
        self._activate(se, target, now, Enqueue.FORK, waker=None)

    def _timed_wake(self, se: SchedEntity, gen: int) -> None:
        if se.wake_gen == gen and se.task.state is TaskState.SLEEPING:
            # The hrtimer fires on the CPU where the task went to sleep: that CPU wakes it.
            self._wakeup(se, self.core.now, waker=se.cpu)

    def _explicit_wake(self, se: SchedEntity, at: int, waker: int | None) -> None:
        if se.task.state is TaskState.SLEEPING:
            self._wakeup(se, at, waker=waker)
            return
        cpu = self.cpus[se.cpu] if se.cpu is not None else None
        # Woken while its blocking segment is simulated but not yet ended: it will not block.
        if cpu is not None and cpu.curr is se and cpu.step is not None \
                and cpu.step.state is TaskState.SLEEPING and cpu.seg_end >= at:
            se.wake_pending = True

    def _wakeup(self, se: SchedEntity, now: int, *, waker: int | None) -> None:
        """try_to_wake_up: a delayed entity is requeued where it is (ttwu_runnable); any other
        gets a CPU (select_task_rq_fair), is placed (place_entity) and queued; then
        wakeup_preempt."""
        se.wake_gen += 1
        if se.on_rq and se.sched_delayed:
            assert se.cpu is not None
            cpu = self.cpus[se.cpu]
            se.task.enqueue(now)
            cpu.rq.requeue_delayed(se, now)
            self._after_enqueue(cpu, se, now, waker=waker, fork=False)
            return
        target = self.balancer.select_cpu(se, waker=waker, fork=False)
        if se.cpu is not None and se.cpu != target:
            self.cpus[se.cpu].rq.move_sleeper(se, self.cpus[target].rq)
            se.last_ran_ns = COLD  # ENQUEUE_MIGRATED clears exec_start: no longer cache-hot
        self._activate(se, target, now, Enqueue.WAKEUP, waker=waker)

    def _activate(self, se: SchedEntity, target: int, now: int, why: Enqueue, *, waker: int | None) -> None:
        """ttwu_do_activate / activate_task: queue `se` on `target` (sched_info_enqueue), then
        wakeup_preempt."""
        se.cpu = target
        cpu = self.cpus[target]
        self._note_wake_on(cpu, now)
        cpu.rq.enqueue(se, now, why)
        se.task.enqueue(now)
        self._after_enqueue(cpu, se, now, waker=waker, fork=why is Enqueue.FORK)

    def _note_wake_on(self, cpu: Pcpu, now: int) -> None:
        """ttwu_do_activate on an idle CPU: fold the idle period into rq->avg_idle."""
        if cpu.idle_stamp is not None and cpu.curr is None:
            self.balancer.update_avg_idle(cpu, now - cpu.idle_stamp)
            cpu.idle_stamp = None

    def _after_enqueue(self, cpu: Pcpu, se: SchedEntity, now: int, *, waker: int | None,
                       fork: bool) -> None:
        self.host.clock_ns = max(self.host.clock_ns, now)
        if self.observer is not None:
            self.observer.on_wake(self.host, se.task, now, cpu.id)
        if cpu.curr is None:
            self.post_service(cpu, now)  # an idle CPU is always rescheduled (resched_curr)
            return
        cpu.rq.wakeup_preempt(se, now, fork=fork)
        self.resched_if_wanted(cpu, now, local=waker == cpu.id)

    def resched_if_wanted(self, cpu: Pcpu, now: int, *, local: bool) -> None:
        """resched_curr_lazy for what `cpu`'s run queue asked: at once, or -- lazy preemption,
        from another CPU -- at the next tick (for the balancer too)."""
        if not cpu.rq.want_resched:
            return
        cpu.rq.want_resched = False
        if cpu.need_resched:
            return
        if self.config.lazy and not local:
            cpu.lazy_resched = True
            return
        cpu.need_resched = True
        if cpu.in_flight and cpu.seg_end > now:
            self.late_reschedules += 1
        self.post_service(cpu, now)

    # --- the tick --------------------------------------------------------------------------

    def _ensure_tick(self, now: int) -> None:
        """Restart the periodic tick (NO_HZ_IDLE stops it while every CPU is idle)."""
        if not self._tick_posted:
            self._tick_posted = True
            at = (now // self.tick_ns + 1) * self.tick_ns
            self._next_tick = at
            self.core.at(at, PRIO_CPU, self._tick, private=True)

    def _tick(self) -> None:
        """sched_tick on every busy CPU (the ticks of all CPUs are aligned, as with skew_tick=0)."""
        self._tick_posted = False
        self._next_tick = 1 << 62
        now = self.core.now
        busy = False
        for cpu in self.cpus:
            if cpu.curr is None:
                continue
            busy = True
            self.ticks += 1
            if cpu.ends_at_tick:  # its segment ended here: no event of its own was posted
                cpu.ends_at_tick = False
                self._segment_end(cpu)
            cpu.rq.tick(now)
            if cpu.lazy_resched:
                cpu.rq.want_resched = True
            self.resched_if_wanted(cpu, now, local=True)
            self.balancer.tick(cpu, now)
        if busy and now + self.tick_ns < self.end_ns:
            self._ensure_tick(now)

    # --- scheduling decisions --------------------------------------------------------------

    def post_service(self, cpu: Pcpu, at: int) -> None:
        """Have `cpu` decide (and run) after the events of instant `at` (for the balancer too)."""
        if not cpu.service_posted:
            cpu.service_posted = True
            self.core.at(max(at, self.core.now), PRIO_RESCHED, lambda: self._service(cpu), private=True)

    def _service(self, cpu: Pcpu) -> None:
        """After an instant's wake-ups, ticks and segment ends: schedule if needed, then execute."""
        cpu.service_posted = False
        if cpu.in_flight:
            return  # decided at the end of that segment
        now = self.core.now
        step = cpu.step
        if cpu.curr is None or cpu.need_resched or (step is not None and step.state is not TaskState.QUEUED):
            self._schedule(cpu, now)
        if cpu.curr is not None:
            self._execute(cpu)

    def _segment_end(self, cpu: Pcpu) -> None:
        cpu.in_flight = False
        se = cpu.curr
        if se is not None and se.polls_cpu_clock and cpu.step is not None \
                and cpu.step.state is TaskState.QUEUED:
            cpu.rq.update_curr(self.core.now)  # its clock_gettime(CLOCK_THREAD_CPUTIME_ID)
            self.resched_if_wanted(cpu, self.core.now, local=True)
        self.post_service(cpu, self.core.now)

    def _schedule(self, cpu: Pcpu, now: int) -> None:
        """__schedule: block or keep the previous task, pick the next one, switch."""
        self.host.clock_ns = max(self.host.clock_ns, now)
        rq = cpu.rq
        prev = cpu.curr
        prev_running = prev is not None
        if prev is not None:
            rq.update_curr(now)
            state = cpu.step.state if cpu.step is not None else TaskState.QUEUED
            if state is TaskState.SLEEPING and prev.wake_pending:
                state = TaskState.QUEUED
            prev.wake_pending = False
            if state is TaskState.EXITED:
                if not rq.dequeue(prev, now, sleep=True):
                    rq.drop_delayed(prev, now)  # task_dead_fair: a dead task is not kept delayed
                prev.task.exit(now)
                prev.last_ran_ns = now
                prev_running = False
            elif state is TaskState.SLEEPING:
                rq.dequeue(prev, now, sleep=True)
                prev.task.depart(now, runnable=False)
                prev.last_ran_ns = now
                prev_running = False
                assert cpu.step is not None
                if cpu.step.wake_at_ns is not None:
                    self._arm_wake(prev, max(cpu.step.wake_at_ns, now))
        nxt = rq.pick(now)
        if nxt is None:
            nxt = self.balancer.newidle(cpu, now)
        rq.want_resched = False
        cpu.need_resched = cpu.lazy_resched = False
        if nxt is None:
            cpu.curr = None
            cpu.step = None
            if cpu.idle_stamp is None:
                cpu.idle_stamp = now
            self.index.refresh(cpu)
            return
        if nxt is not prev or not prev_running:
            if prev is not None and prev_running:
                prev.task.depart(now, runnable=True)
                prev.last_ran_ns = now
            nxt.task.arrive(now)
            self.switches += 1
            cpu.switched_in = True
        cpu.curr = nxt
        cpu.step = None
        cpu.idle_stamp = None
        self.index.refresh(cpu)
        self._ensure_tick(now)

    def _next_known_wake(self, cpu: Pcpu, now: int) -> int | None:
        """The earliest pending timed wake-up of a task that went to sleep on this CPU: its timer
        fires here, so the wake-up lands here or on an idle CPU (select_idle_sibling)."""
        wakes = cpu.wakes
        while wakes:
            at, gen, _, se = wakes[0]
            if se.wake_gen != gen or se.cpu != cpu.id or at <= now or se.task.state is not TaskState.SLEEPING:
                heapq.heappop(wakes)
                continue
            return at
        return None

    def _arm_wake(self, se: SchedEntity, at: int) -> None:
        gen = se.wake_gen
        if se.cpu is not None:
            heapq.heappush(self.cpus[se.cpu].wakes, (at, gen, se.task.tid, se))
        self.core.at(at, PRIO_WAKE, lambda: self._timed_wake(se, gen), private=True)

    # --- execution -------------------------------------------------------------------------

    def _execute(self, cpu: Pcpu) -> None:
        """Run curr's body from now until the next event that concerns its CPU (or it blocks)."""
        se = cpu.curr
        if se is None or cpu.in_flight:
            return
        now = self.core.now
        bound = min(self.end_ns, self._next_tick)
        nxt = self.core.next_after(now)
        if nxt is not None and nxt < bound:
            bound = nxt
        known = self._next_known_wake(cpu, now)
        if known is not None and known < bound:
            bound = known
        if bound <= now:
            return  # the run is over: stay on the CPU
        if se.polls_cpu_clock:
            slice_end = cpu.rq.slice_end_ns(now)
            if slice_end is not None and slice_end < bound:
                bound = slice_end
        step, stop = self._run_body(cpu, se, now, bound)
        cpu.seg_start, cpu.seg_end, cpu.step = now, stop, step
        cpu.in_flight = True
        cpu.busy_ns += stop - now
        self.segments += 1
        if self.observer is not None and stop > now:
            self.observer.on_segment(self.host, cpu.id, se.task, now, stop, cpu.switched_in)
        cpu.switched_in = False
        if stop == self._next_tick and step.state is TaskState.QUEUED:
            cpu.ends_at_tick = True  # the tick, which comes then anyway, ends it (one event less)
        else:
            self.core.at(stop, PRIO_CPU, lambda: self._segment_end(cpu), private=True)

    def _run_body(self, cpu: Pcpu, se: SchedEntity, start: int, bound: int) -> tuple[Step, int]:
        """Call the body until `bound`, in pieces of at most max_segment_ns (invisible outside)."""
        t = start
        self._executing = cpu
        try:
            while True:
                end = bound if self.max_segment_ns is None else min(bound, t + self.max_segment_ns)
                slice_ = Slice(se.task, t, end, t)
                with self.host.running(slice_):
                    step = se.body.step(slice_)
                stopped_early = slice_.deadline_ns < end  # it woke a task: its segment ends here
                if slice_.now_ns == t and step.state is TaskState.QUEUED and not stopped_early:
                    raise RuntimeError(f"task {se.task.name} returned runnable without using any CPU time")
                t = slice_.now_ns
                if step.state is not TaskState.QUEUED or stopped_early or t >= bound:
                    return step, t
        finally:
            self._executing = None
