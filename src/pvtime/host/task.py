"""Host tasks and their schedstat accounting, kept as Linux's kernel/sched/stats.h keeps it.

`/proc/<tid>/schedstat` shows three numbers: the time on CPU (sum_exec_runtime), the time spent
runnable on a run queue but not running (`run_delay`), and the number of timeslices (pcount).
`run_delay` grows only when the task arrives on a CPU after queueing (sched_info_arrive); a task
that sleeps (a vCPU in WFI) accrues nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class TaskState(Enum):
    """Where a task is, from the scheduler's point of view."""

    SLEEPING = "sleeping"  # blocked: not on a run queue
    QUEUED = "queued"  # runnable, waiting on a run queue
    RUNNING = "running"
    EXITED = "exited"


class Task:
    """A host thread with schedstat accounting (all times are virtual nanoseconds)."""

    def __init__(self, tid: int, name: str) -> None:
        self.tid = tid
        self.name = name
        self.state = TaskState.SLEEPING
        self.run_time_ns = 0  # sum_exec_runtime
        self.run_delay_ns = 0  # sched_info.run_delay
        self.timeslices = 0  # sched_info.pcount
        self._last_queued: int | None = None
        self._last_arrival = 0

    def __repr__(self) -> str:
        return f"Task({self.tid}, {self.name!r}, {self.state.value})"

    def schedstat(self) -> tuple[int, int, int]:
        """The three fields of /proc/<tid>/schedstat."""
        return (self.run_time_ns, self.run_delay_ns, self.timeslices)

    def run_delay_at(self, now_ns: int) -> int:
        """`run_delay` with a wait in progress counted up to `now_ns`: the time spent runnable but
        not running as it passes, where schedstat adds each wait only at the next arrival."""
        if self.state is TaskState.QUEUED and self._last_queued is not None:
            return self.run_delay_ns + max(0, now_ns - self._last_queued)
        return self.run_delay_ns

    def enqueue(self, now_ns: int) -> None:
        """The task became runnable (woke, or was preempted): sched_info_enqueue."""
        self._require(self.state in (TaskState.SLEEPING, TaskState.RUNNING), "enqueue")
        if self._last_queued is None:
            self._last_queued = now_ns
        self.state = TaskState.QUEUED

    def arrive(self, now_ns: int) -> None:
        """The task is switched in on a CPU: sched_info_arrive adds its wait to run_delay."""
        self._require(self.state in (TaskState.SLEEPING, TaskState.QUEUED), "arrive")
        if self._last_queued is not None:
            self.run_delay_ns += now_ns - self._last_queued
            self._last_queued = None
        self._last_arrival = now_ns
        self.timeslices += 1
        self.state = TaskState.RUNNING

    def depart(self, now_ns: int, *, runnable: bool) -> None:
        """The task is switched out: still runnable (preempted) or going to sleep."""
        self._require(self.state is TaskState.RUNNING, "depart")
        self.run_time_ns += now_ns - self._last_arrival
        self.state = TaskState.SLEEPING
        if runnable:
            self.enqueue(now_ns)

    def exit(self, now_ns: int) -> None:
        """The task ends; its accounting stays readable."""
        if self.state is TaskState.RUNNING:
            self.depart(now_ns, runnable=False)
        self._last_queued = None
        self.state = TaskState.EXITED

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            raise RuntimeError(f"task {self.name}: cannot {what} while {self.state.value}")


@dataclass
class Slice:
    """A task's turn on a CPU, from `start_ns` until at most `deadline_ns`."""

    task: Task
    start_ns: int
    deadline_ns: int
    now_ns: int

    @property
    def remaining_ns(self) -> int:
        """Time left before the host takes the CPU back."""
        return max(0, self.deadline_ns - self.now_ns)

    def advance(self, ns: int) -> None:
        """Consume CPU time; never past the deadline."""
        if ns < 0:
            raise ValueError("time does not run backwards")
        self.now_ns = min(self.deadline_ns, self.now_ns + ns)


@dataclass(frozen=True)
class Step:
    """What a task's body reports when it gives the CPU back."""

    state: TaskState  # QUEUED: still runnable; SLEEPING: blocked; EXITED: done
    wake_at_ns: int | None = None  # for SLEEPING: when to wake it (None: only an explicit wake)


class TaskBody(Protocol):
    """The code a host task runs: called on a CPU with its slice, returns when it yields."""

    def step(self, slice_: Slice) -> Step:
        """Run until the slice's deadline, a block, or the end."""
        ...
