"""A host machine: a virtual clock, a counter frequency, and the tasks that run on it.

The host is driven from outside (a scheduler or a test). While a task is on a CPU, `current`
holds its `Slice`: the calling task that KVM reads `run_delay` from, the time cursor the CPU
backend advances as guest code executes, and the deadline at which the slice ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.host.task import Slice, Task, TaskState


class Host:
    """A host with a generic-timer counter of `counter_hz` and schedstat-keeping tasks."""

    def __init__(self, counter_hz: int = 25_000_000, *, ncpus: int = 1,
                 schedstats: bool = True, name: str = "host") -> None:
        if counter_hz <= 0 or counter_hz >= 1 << 32:
            raise ValueError(f"counter_hz must be in 1..2^32-1 (CNTFRQ_EL0 is 32-bit), got {counter_hz}")
        if ncpus <= 0:
            raise ValueError(f"ncpus must be positive, got {ncpus}")
        self.name = name
        self.counter_hz = counter_hz
        self.ncpus = ncpus
        self.schedstats = schedstats  # CONFIG_SCHEDSTATS / sched_info_on(): PV time needs it
        self.clock_ns = 0
        self.tasks: list[Task] = []
        self.current: Slice | None = None
        self._control_ns: int | None = None  # set while a control thread calls the kernel
        self._waker: Callable[[Task], None] | None = None

    def now_ns(self) -> int:
        """Virtual time: the running slice's cursor when a task is on a CPU, the control call's
        instant inside `control_call`, else the host clock."""
        if self.current is not None:
            return self.current.now_ns
        return self._control_ns if self._control_ns is not None else self.clock_ns

    def counter(self, at_ns: int | None = None) -> int:
        """The physical counter (CNTPCT) at a virtual time: floor(ns * hz / 1e9)."""
        ns = self.now_ns() if at_ns is None else at_ns
        return ns * self.counter_hz // NSEC_PER_SEC

    def counter_to_ns(self, ticks: int) -> int:
        """The first virtual time at which the counter reads at least `ticks`."""
        return -(-ticks * NSEC_PER_SEC // self.counter_hz)

    def spawn(self, name: str) -> Task:
        """Create a task (sleeping until it is woken or put on a CPU)."""
        task = Task(len(self.tasks) + 1, name)
        self.tasks.append(task)
        return task

    def set_waker(self, waker: Callable[[Task], None]) -> None:
        """The scheduler that runs this host's tasks says how to wake one (try_to_wake_up)."""
        self._waker = waker

    def wake(self, task: Task) -> None:
        """Wake a task blocked in the kernel (the kernel's wake_up_process).

        Without a scheduler (a test driving the host by hand) there is nothing to wake."""
        if self._waker is not None:
            self._waker(task)

    def current_task(self) -> Task:
        """The task calling into the kernel; KVM reads `run_delay` from it."""
        if self.current is None:
            raise RuntimeError("no task is on a CPU: call KVM from inside Host.on_cpu()")
        return self.current.task

    @contextmanager
    def on_cpu(self, task: Task, budget_ns: int | None = None,
               *, start_ns: int | None = None) -> Iterator[Slice]:
        """Run `task` on a CPU from `start_ns` (default: the host clock) for up to `budget_ns`.

        On leaving, the task is switched out still runnable, and the host clock moves to where
        the slice ended (for a single-CPU driver; a multi-CPU scheduler passes `start_ns`).
        """
        start = self.clock_ns if start_ns is None else start_ns
        deadline = start + (budget_ns if budget_ns is not None else 1 << 62)
        task.arrive(start)
        outer, self.current = self.current, Slice(task, start, deadline, start)
        try:
            yield self.current
        finally:
            ended = self.current.now_ns
            self.current = outer
            if task.state is TaskState.RUNNING:
                task.depart(ended, runnable=True)
            self.clock_ns = max(self.clock_ns, ended)

    @contextmanager
    def running(self, slice_: Slice) -> Iterator[Slice]:
        """Make `slice_` the one executing, for a scheduler that does its own schedstat calls.

        Several CPUs run one slice at a time, in virtual-time order: KVM reads the calling task
        and the time from `current` while the slice's body executes.
        """
        outer, self.current = self.current, slice_
        try:
            yield slice_
        finally:
            self.current = outer

    @contextmanager
    def control_call(self, now_ns: int) -> Iterator[None]:
        """Kernel calls made at `now_ns` by a VMM control thread the scheduler does not model.

        A VMM's migration thread saves and restores vCPU state in microseconds, far below a
        scheduler tick, so pvtime counts its work as instantaneous and gives it no task: the calls
        read the time, and one that needs a calling task (a KVM_RUN that enters the guest) fails.
        """
        if self.current is not None:
            raise RuntimeError(f"{self.name}: a control call while {self.current.task} is on a CPU")
        outer, self._control_ns = self._control_ns, now_ns
        try:
            yield
        finally:
            self._control_ns = outer

    def hold(self, task: Task, wait_ns: int) -> None:
        """Keep `task` runnable but off the CPU for `wait_ns`: deterministic steal on purpose.

        The wait is added to `run_delay` when the task next arrives on a CPU, as in Linux.
        """
        if wait_ns < 0:
            raise ValueError("wait_ns must be >= 0")
        if task.state is not TaskState.QUEUED:
            task.enqueue(self.clock_ns)
        self.clock_ns += wait_ns

    def idle(self, ns: int) -> None:
        """Let virtual time pass with nothing to do (sleeping tasks accrue no run_delay)."""
        if ns < 0:
            raise ValueError("ns must be >= 0")
        self.clock_ns += ns
