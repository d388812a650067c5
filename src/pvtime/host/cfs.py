"""CFS, the fair policy of Linux <= 6.5 (kernel/sched/fair.c at tag v6.5).

Followed, function by function:
- `update_curr`: the running entity's vruntime grows by its CPU time scaled by
  NICE_0_LOAD / weight; `update_min_vruntime` keeps min_vruntime the smallest vruntime of the
  running entity and the leftmost waiting one, never moving back;
- `__sched_period` / `sched_slice`: the period is the latency for up to latency/min_granularity
  tasks and nr * min_granularity beyond; an entity's slice is its weight's share of it;
- `check_preempt_tick` (at each tick): the running entity yields once it has run its slice since
  it was picked, or, after at least min_granularity, when it is ahead of the leftmost waiting
  entity by more than its slice;
- `place_entity`: a new entity starts a vslice behind min_vruntime (START_DEBIT); a sleeper at
  min_vruntime - latency/2 at best (GENTLE_FAIR_SLEEPERS), never earlier than its own vruntime
  unless it slept for more than 2^63 ns of vruntime (long sleepers are not modelled: 292 years);
- `check_preempt_wakeup` / `wakeup_preempt_entity`: a woken entity preempts when the running one
  is ahead of it by more than the wake-up granularity, scaled to the woken entity's weight;
- migration keeps an entity's vruntime relative to min_vruntime (`migrate_task_rq_fair`).

Left out: group scheduling, NEXT_BUDDY / LAST_BUDDY (off by default, and buddies do not move
run_delay for the tasks modelled here), SCHED_IDLE / SCHED_BATCH, PELT.
"""

from __future__ import annotations

from pvtime.host.entity import SchedEntity
from pvtime.host.runqueue import Enqueue, FairRunQueue
from pvtime.host.sched_config import CfsTunables
from pvtime.host.weights import NICE_0_LOAD, calc_delta_fair


class CfsRunQueue(FairRunQueue):
    """One CPU's CFS queue: waiting entities ordered by vruntime, plus the running one."""

    def __init__(self, cpu: int, tunables: CfsTunables) -> None:
        super().__init__(cpu)
        self.tunables = tunables  # already scaled for the CPU count
        self.min_vruntime = 0
        self._seq = 0

    # --- the ordered queue -------------------------------------------------------------------

    def _insert(self, se: SchedEntity) -> None:
        self._seq += 1
        se.queue_seq = self._seq
        self.queue.append(se)

    def _remove(self, se: SchedEntity) -> None:
        self.queue.remove(se)

    def leftmost(self) -> SchedEntity | None:
        """__pick_first_entity: the waiting entity with the smallest vruntime."""
        if not self.queue:
            return None
        return min(self.queue, key=lambda e: (e.vruntime, e.queue_seq))

    def update_min_vruntime(self) -> None:
        """min_vruntime follows the smallest vruntime on the queue and never goes back."""
        curr = self.curr if self.curr is not None and self.curr.on_rq else None
        vruntime = self.min_vruntime
        if curr is not None:
            vruntime = curr.vruntime
        left = self.leftmost()
        if left is not None:
            vruntime = left.vruntime if curr is None else min(vruntime, left.vruntime)
        self.min_vruntime = max(self.min_vruntime, vruntime)

    # --- slices ------------------------------------------------------------------------------

    def sched_period(self, nr: int) -> int:
        """__sched_period: latency, stretched when more tasks than latency/min_granularity run."""
        t = self.tunables
        nr_latency = t.latency_ns // t.min_granularity_ns
        return nr * t.min_granularity_ns if nr > nr_latency else t.latency_ns

    def sched_slice(self, se: SchedEntity) -> int:
        """The entity's ideal run time per period: its weight's share of the period."""
        nr, load = self.nr_queued, self.load
        if not se.on_rq:
            nr, load = nr + 1, load + se.weight
        # BASE_SLICE: never less than the minimum granularity
        return max(self.sched_period(nr) * se.weight // max(load, 1), self.tunables.min_granularity_ns)

    def sched_vslice(self, se: SchedEntity) -> int:
        """sched_vslice: the slice in vruntime."""
        return calc_delta_fair(self.sched_slice(se), se.weight)

    # --- charging ----------------------------------------------------------------------------

    def update_curr(self, now: int) -> None:
        if self.charge_vruntime(now) is None:
            return
        self.update_min_vruntime()
        # CFS asks to reschedule from the tick (check_preempt_tick), not from update_curr.

    def tick(self, now: int) -> None:
        """entity_tick: update_curr, then check_preempt_tick when others wait."""
        self.update_curr(now)
        curr = self.curr
        if curr is None or self.nr_queued <= 1:
            return
        ideal = min(self.sched_slice(curr), self.tunables.latency_ns)
        ran = curr.sum_exec_ns - curr.prev_sum_exec_ns
        if ran > ideal:
            self.want_resched = True
            return
        if ran < self.tunables.min_granularity_ns:
            return
        left = self.leftmost()
        if left is not None and curr.vruntime - left.vruntime > ideal:
            self.want_resched = True

    # --- picking -----------------------------------------------------------------------------

    def pick(self, now: int) -> SchedEntity | None:
        prev = self.curr
        if prev is not None:
            self.update_curr(now)
        left = self.leftmost()
        best = left
        if prev is not None and prev.on_rq and (best is None or prev.vruntime < best.vruntime):
            return prev  # pick_next_entity: curr if still left of the leftmost; no set_next_entity
        self.put_prev(now)
        if best is None:
            return None
        self._set_next(best, now)
        self.update_min_vruntime()
        return best

    # --- placement, enqueue and dequeue ------------------------------------------------------

    def place(self, se: SchedEntity, *, initial: bool) -> None:
        """place_entity: START_DEBIT for a new entity, GENTLE_FAIR_SLEEPERS for a sleeper."""
        vruntime = self.min_vruntime
        if initial:
            se.vruntime = vruntime + self.sched_vslice(se)
            return
        vruntime -= self.tunables.latency_ns // 2
        se.vruntime = max(se.vruntime, vruntime)

    def enqueue(self, se: SchedEntity, now: int, why: Enqueue) -> None:
        self.update_curr(now)
        if why is Enqueue.MIGRATE:
            se.vruntime += self.min_vruntime  # kept relative while in flight (detach)
        elif why is Enqueue.FORK:
            self.place(se, initial=True)
        else:
            self.place(se, initial=False)
        self._account_enqueue(se)
        if se is not self.curr:
            self._insert(se)
        self.update_min_vruntime()

    def dequeue(self, se: SchedEntity, now: int, *, sleep: bool) -> bool:
        self.update_curr(now)
        if se is not self.curr:
            self._remove(se)
        self._account_dequeue(se)
        self.update_min_vruntime()
        return True

    def requeue_delayed(self, se: SchedEntity, now: int) -> None:
        raise RuntimeError("CFS never delays a dequeue")

    def drop_delayed(self, se: SchedEntity, now: int) -> None:
        raise RuntimeError("CFS never delays a dequeue")

    def detach(self, se: SchedEntity, now: int) -> None:
        """dequeue_entity without DEQUEUE_SLEEP: vruntime made relative before min_vruntime moves."""
        self.update_curr(now)
        self._remove(se)
        se.vruntime -= self.min_vruntime
        self._account_dequeue(se)
        self.update_min_vruntime()

    def move_sleeper(self, se: SchedEntity, dst: FairRunQueue) -> None:
        """A sleeper woken onto another CPU keeps its vruntime relative to min_vruntime
        (migrate_task_rq_fair, then enqueue_entity's renormalisation)."""
        assert isinstance(dst, CfsRunQueue)
        se.vruntime += dst.min_vruntime - self.min_vruntime

    # --- wake-up preemption --------------------------------------------------------------------

    def wakeup_preempt(self, se: SchedEntity, now: int, *, fork: bool) -> None:
        curr = self.curr
        if curr is None or curr is se or self.want_resched:
            return
        self.update_curr(now)
        vdiff = curr.vruntime - se.vruntime  # wakeup_preempt_entity(curr, se)
        if vdiff > 0 and vdiff > calc_delta_fair(self.tunables.wakeup_granularity_ns, se.weight):
            self.want_resched = True


__all__ = ["CfsRunQueue", "NICE_0_LOAD"]
