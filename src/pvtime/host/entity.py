"""A task as the fair scheduler sees it (Linux's `struct sched_entity`), shared by both policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from pvtime.host.cpumask import mask_of
from pvtime.host.weights import weight_of

if TYPE_CHECKING:
    from pvtime.host.task import Task, TaskBody


@dataclass(eq=False)
class SchedEntity:
    """A task's scheduling state: weight, virtual runtime and, for EEVDF, deadline and lag."""

    task: Task
    body: TaskBody
    nice: int = 0
    allowed: tuple[int, ...] = ()  # sorted CPU ids the task may run on (its affinity mask)
    weight: int = field(init=False)
    allowed_set: frozenset[int] = field(init=False)
    allowed_mask: int = field(init=False)  # the same as a cpumask, for searches over many CPUs
    vruntime: int = 0
    cpu: int | None = None  # task_cpu(): where it last ran or is queued
    on_rq: bool = False  # on `cpu`'s run queue (queued, running, or -- EEVDF -- delayed)
    # EEVDF (v6.18): virtual deadline, requested slice, lag kept across sleep and migration,
    # the slice-protection bound of RUN_TO_PARITY, and DELAY_DEQUEUE's state.
    deadline: int = 0
    slice_ns: int = 0
    vlag: int = 0
    vprot: int = 0
    rel_deadline: bool = False
    sched_delayed: bool = False
    # CFS (6.5): sum_exec_runtime when the entity was last picked (check_preempt_tick).
    sum_exec_ns: int = 0
    prev_sum_exec_ns: int = 0
    exec_start: int = 0  # when it was last put on a CPU or charged (task_hot, update_curr)
    last_ran_ns: int = -(1 << 62)  # when it last left a CPU (task_hot: cache-hot for migration)
    recent_used_cpu: int | None = None  # p->recent_used_cpu (select_idle_sibling)
    list_seq: int = 0  # position in rq->cfs_tasks: renewed at enqueue and pick (detach walks oldest first)
    # The task enters the kernel all the time (it polls its CPU clock with clock_gettime, which
    # calls update_curr through task_sched_runtime): the end of its slice is noticed at once.
    polls_cpu_clock: bool = False
    # Bookkeeping of the simulator, not of Linux.
    queue_seq: int = 0  # order of insertion into the queue: equal keys keep it, as rb_add does
    wake_gen: int = 0  # invalidates a pending timed wake-up when the task is woken otherwise
    wake_pending: bool = False  # an explicit wake-up arrived while it was still on the CPU

    def __post_init__(self) -> None:
        self.weight = weight_of(self.nice)
        self.allowed_set, self.allowed_mask = _affinity(self.allowed)

    def __repr__(self) -> str:
        return f"SchedEntity({self.task.name}, v={self.vruntime}, cpu={self.cpu})"


@lru_cache(maxsize=16)
def _affinity(allowed: tuple[int, ...]) -> tuple[frozenset[int], int]:
    """An affinity as a set (membership tests) and a cpumask (searches), computed once per
    distinct affinity: thousands of tasks on a big host share a few."""
    return frozenset(allowed), mask_of(allowed)
