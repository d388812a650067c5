"""What the scheduler core asks of a fair run queue, and the bookkeeping both policies share.

One `FairRunQueue` per CPU, as Linux has one `cfs_rq` per CPU (without group scheduling). The
core (`pvtime.host.scheduler`) calls these methods at the moments Linux calls their namesakes;
`pvtime.host.eevdf` and `pvtime.host.cfs` supply the arithmetic. Queues are plain lists: a CPU
holds a handful of tasks, and a scan is simpler to check against Linux than a balanced tree.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pvtime.host.entity import SchedEntity
from pvtime.host.weights import calc_delta_fair


def _nothing() -> None:
    pass


class Enqueue(Enum):
    """Why an entity joins a run queue (the ENQUEUE_* flags that change placement)."""

    FORK = "fork"  # ENQUEUE_INITIAL: a new task
    WAKEUP = "wakeup"  # ENQUEUE_WAKEUP: it slept
    MIGRATE = "migrate"  # moved here by the load balancer while runnable


class FairRunQueue:
    """A CPU's fair run queue: the waiting entities, the running one (`curr`), their load."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.curr: SchedEntity | None = None
        self.queue: list[SchedEntity] = []  # on the queue, not running (Linux's rbtree)
        self.nr_queued = 0  # entities on this queue, curr and delayed ones included
        self.load = 0  # their summed weight
        self.nr_delayed = 0
        # resched_curr(_lazy) as the arithmetic requests it (slice used up, a wake-up that
        # preempts); the core acts on it and clears it, as __schedule clears TIF_NEED_RESCHED.
        self.want_resched = False
        # Called after every change of nr_queued, nr_delayed or load: the host's CpuIndex keeps
        # its idle and runnable sets from it.
        self.on_change: Callable[[], None] = _nothing

    @property
    def nr_runnable(self) -> int:
        """Runnable entities, curr included, delayed ones not (h_nr_runnable)."""
        return self.nr_queued - self.nr_delayed

    def migratable(self) -> list[SchedEntity]:
        """Waiting entities a balancer may move (neither running nor delayed), least recently
        enqueued or picked first (detach_tasks walks rq->cfs_tasks from its tail)."""
        return sorted((se for se in self.queue if not se.sched_delayed), key=lambda e: e.list_seq)

    def touch(self, se: SchedEntity) -> None:
        """Move `se` to the head of rq->cfs_tasks (account_entity_enqueue, set_next_entity)."""
        FairRunQueue._list_clock += 1
        se.list_seq = FairRunQueue._list_clock

    _list_clock = 0

    def _account_enqueue(self, se: SchedEntity) -> None:
        self.touch(se)
        se.on_rq = True
        self.nr_queued += 1
        self.load += se.weight
        self.on_change()

    def _account_dequeue(self, se: SchedEntity) -> None:
        se.on_rq = False
        self.nr_queued -= 1
        self.load -= se.weight
        self.on_change()

    def charge_vruntime(self, now: int) -> SchedEntity | None:
        """The common head of update_curr: charge the running entity's CPU time to its vruntime
        (scaled by NICE_0_LOAD / weight); the entity when time was charged, else None."""
        curr = self.curr
        delta = self.charge(now)
        if curr is None or delta <= 0:
            return None
        curr.vruntime += calc_delta_fair(delta, curr.weight)
        return curr

    def charge(self, now: int) -> int:
        """The running entity's unaccounted CPU time up to `now` (update_se); moves exec_start."""
        curr = self.curr
        if curr is None:
            return 0
        delta = now - curr.exec_start
        if delta <= 0:
            return 0
        curr.exec_start = now
        curr.sum_exec_ns += delta
        return delta

    # --- the policy's part ---------------------------------------------------------------

    def update_curr(self, now: int) -> None:
        """Charge the running entity (and ask to reschedule when its slice is used up)."""
        raise NotImplementedError

    def tick(self, now: int) -> None:
        """entity_tick: charge the running entity; ask to reschedule when it should yield."""
        raise NotImplementedError

    def enqueue(self, se: SchedEntity, now: int, why: Enqueue) -> None:
        """enqueue_entity: place the entity and queue it."""
        raise NotImplementedError

    def dequeue(self, se: SchedEntity, now: int, *, sleep: bool) -> bool:
        """dequeue_entity; False when EEVDF keeps a sleeper queued (DELAY_DEQUEUE)."""
        raise NotImplementedError

    def requeue_delayed(self, se: SchedEntity, now: int) -> None:
        """A delayed entity is woken while still queued (requeue_delayed_entity)."""
        raise NotImplementedError

    def drop_delayed(self, se: SchedEntity, now: int) -> None:
        """A delayed entity leaves for good (its task exited: task_dead_fair)."""
        raise NotImplementedError

    def pick(self, now: int) -> SchedEntity | None:
        """pick_next_entity + set_next_entity: the entity to run next becomes `curr`.

        The previous `curr`, if still runnable, must have been put back with `put_prev`.
        """
        raise NotImplementedError

    def put_prev(self, now: int) -> None:
        """put_prev_entity: the running entity stops running; if still queued it waits again."""
        prev = self.curr
        if prev is None:
            return
        if prev.on_rq:
            self.update_curr(now)
            self._insert(prev)
        self.curr = None

    def _set_next(self, se: SchedEntity, now: int) -> None:
        """set_next_entity: `se` leaves the ordered queue and runs, its slice counted from now."""
        self._remove(se)
        self.curr = se
        self.touch(se)
        se.exec_start = now
        se.prev_sum_exec_ns = se.sum_exec_ns

    def _insert(self, se: SchedEntity) -> None:
        """__enqueue_entity: into the ordered queue."""
        raise NotImplementedError

    def _remove(self, se: SchedEntity) -> None:
        """__dequeue_entity: out of the ordered queue."""
        raise NotImplementedError

    def entity_eligible(self, se: SchedEntity) -> bool:
        """EEVDF's eligibility (lag >= 0); CFS has none, so every entity is."""
        return True

    def slice_end_ns(self, now: int) -> int | None:
        """For a running entity that polls its CPU clock (update_curr at every instant): the next
        time that could change a pick; None when nothing can (CFS reschedules from the tick only)."""
        return None

    def wakeup_preempt(self, se: SchedEntity, now: int, *, fork: bool) -> None:
        """check_preempt_wakeup_fair: ask to reschedule when the woken `se` should preempt `curr`."""
        raise NotImplementedError

    def detach(self, se: SchedEntity, now: int) -> None:
        """A waiting entity leaves for another CPU (the balancer's dequeue)."""
        raise NotImplementedError

    def move_sleeper(self, se: SchedEntity, dst: FairRunQueue) -> None:
        """A sleeping entity is woken onto `dst`: carry over what is relative to this queue."""
