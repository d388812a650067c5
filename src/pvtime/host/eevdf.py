"""EEVDF, the fair policy of Linux >= 6.6, modelled on v6.18 (kernel/sched/fair.c at tag v6.18).

Each entity has a virtual runtime `v` (CPU time scaled by NICE_0_LOAD / weight), a requested
slice (sysctl_sched_base_slice) and a virtual deadline `d = v + slice * NICE_0_LOAD / weight`.
The queue's zero-lag point is the weight-averaged virtual runtime `V` (`avg_vruntime`); an entity
is eligible when `v <= V` (`entity_eligible`), and the eligible entity with the earliest deadline
runs (`pick_eevdf`). Followed, function by function:

- `update_curr` / `update_deadline`: charge the running entity; when it reaches its deadline it
  gets a new slice and deadline, and (with more than one entity queued) asks to reschedule;
- `set_protect_slice` / `protect_slice` (RUN_TO_PARITY): once picked, the running entity is not
  preempted by a wake-up before it reaches the deadline it had when picked;
- `place_entity` (PLACE_LAG, PLACE_DEADLINE_INITIAL, PLACE_REL_DEADLINE): a waking entity
  keeps the lag it had when it slept, scaled for the weight it adds; a new one starts at `V`
  with half a slice to its first deadline; a migrating one keeps its relative deadline;
- `update_entity_lag`: the lag is clamped to the larger of two slices and a tick;
- DELAY_DEQUEUE / DELAY_ZERO: an entity that blocks while not eligible stays queued (it keeps
  counting in `V` and the load) until it is picked or woken; then positive lag is dropped;
- `check_preempt_wakeup_fair`: a woken entity preempts when it is what `pick_eevdf` would run
  now; a re-picked running entity keeps its old protection (pick_next_task_fair does not call
  set_next_entity for it), so once past it, every update_curr asks to reschedule again.

Left out: group scheduling (autogroups, cgroups), PELT load tracking (the balancer uses weights),
custom slices (sched_attr.sched_runtime) and therefore PREEMPT_SHORT, NEXT_BUDDY (off by
default), SCHED_IDLE / SCHED_BATCH, and the 32-bit inverse-weight arithmetic of __calc_delta
(exact division differs from it by at most a nanosecond per update).
"""

from __future__ import annotations

from pvtime.host.entity import SchedEntity
from pvtime.host.runqueue import Enqueue, FairRunQueue
from pvtime.host.sched_config import EevdfTunables
from pvtime.host.weights import NICE_0_LOAD, calc_delta_fair


def _div_s64(a: int, b: int) -> int:
    """C division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


class EevdfRunQueue(FairRunQueue):
    """One CPU's EEVDF queue."""

    def __init__(self, cpu: int, tunables: EevdfTunables, tick_ns: int) -> None:
        super().__init__(cpu)
        self.base_slice_ns = tunables.base_slice_ns  # already scaled for the CPU count
        self.tick_ns = tick_ns
        # sum(w * v) and sum(w) over the queue, curr excluded (avg_vruntime_add/sub); Python
        # integers do not overflow, so the absolute vruntime serves as the key.
        self.sum_wv = 0
        self.sum_w = 0
        self.zero_vruntime = 0  # where an empty queue places (the last V)
        self._seq = 0

    # --- the ordered queue (__enqueue_entity / __dequeue_entity) --------------------------

    def _insert(self, se: SchedEntity) -> None:
        self._seq += 1
        se.queue_seq = self._seq
        self.queue.append(se)
        self.sum_wv += se.weight * se.vruntime
        self.sum_w += se.weight

    def _remove(self, se: SchedEntity) -> None:
        self.queue.remove(se)
        self.sum_wv -= se.weight * se.vruntime
        self.sum_w -= se.weight

    # --- the zero-lag point ----------------------------------------------------------------

    def _sums(self) -> tuple[int, int]:
        s, w = self.sum_wv, self.sum_w
        curr = self.curr
        if curr is not None and curr.on_rq:
            s += curr.weight * curr.vruntime
            w += curr.weight
        return s, w

    def avg_vruntime(self) -> int:
        """V: the weighted mean vruntime of the queued entities, curr included (rounded down)."""
        s, w = self._sums()
        if w:
            self.zero_vruntime = s // w
        return self.zero_vruntime

    def entity_eligible(self, se: SchedEntity) -> bool:
        """vruntime_eligible: V >= v, compared without division."""
        s, w = self._sums()
        return s >= se.vruntime * w

    # --- charging ----------------------------------------------------------------------------

    def _update_deadline(self, se: SchedEntity) -> bool:
        if se.vruntime < se.deadline:
            return False
        se.slice_ns = self.base_slice_ns
        se.deadline = se.vruntime + calc_delta_fair(se.slice_ns, se.weight)
        return True

    def update_curr(self, now: int) -> None:
        curr = self.charge_vruntime(now)
        if curr is None:
            return
        resched = self._update_deadline(curr)
        if self.nr_queued == 1:
            return
        if resched or not self._protect_slice(curr):
            self.want_resched = True

    def tick(self, now: int) -> None:
        self.update_curr(now)

    def slice_end_ns(self, now: int) -> int | None:
        """For a running entity whose every instant calls update_curr (it polls its CPU clock):
        the next time a pick could change, if it keeps running from `now`; None when alone.

        While protected, that is when protection or the slice ends. Once not protected, every
        update_curr asks to reschedule and `pick_eevdf` keeps it only while it is eligible with
        the earliest deadline: the pick changes when its deadline passes, when it stops being
        eligible, or when a waiting entity with an earlier deadline becomes eligible (the
        zero-lag point V moves up as it runs).
        """
        curr = self.curr
        if curr is None or self.nr_queued <= 1 or not curr.on_rq:
            return None
        v = curr.vruntime + calc_delta_fair(max(0, now - curr.exec_start), curr.weight)
        protect = min(curr.deadline, curr.vprot)
        if v < protect:
            target = protect
        else:
            targets = [curr.deadline] if v < curr.deadline else []
            sum_wv, sum_w = self.sum_wv, self.sum_w
            if sum_w:
                targets.append(sum_wv // sum_w + 1)  # eligible while v * W_queue <= sum(w v)
                for se in self.queue:
                    # se becomes eligible once sum_wv + w_c v_c >= v_se (sum_w + w_c)
                    if se.deadline <= curr.deadline and sum_wv + curr.weight * v < se.vruntime * (sum_w + curr.weight):
                        need = se.vruntime * (sum_w + curr.weight) - sum_wv
                        targets.append(-(-need // curr.weight))
            targets = [t for t in targets if t > v]
            if not targets:
                return None
            target = min(targets)
        return now + max(1, -(-(target - v) * curr.weight // NICE_0_LOAD))

    # --- slice protection (RUN_TO_PARITY) ----------------------------------------------------

    def _set_protect_slice(self, se: SchedEntity) -> None:
        # Every entity asks for the base slice, so the queue's minimum slice is se's own and
        # the protected span is the whole slice: up to the deadline it was picked with.
        se.vprot = se.deadline

    @staticmethod
    def _protect_slice(se: SchedEntity) -> bool:
        return se.vruntime < se.vprot

    # --- picking -----------------------------------------------------------------------------

    def _pick_eevdf(self, protect: bool) -> SchedEntity | None:
        curr = self.curr
        if self.nr_queued == 1:
            if curr is not None and curr.on_rq:
                return curr
            return self.queue[0] if self.queue else None
        if curr is not None and (not curr.on_rq or not self.entity_eligible(curr)):
            curr = None
        if curr is not None and protect and self._protect_slice(curr):
            return curr
        best: SchedEntity | None = None
        s, w = self._sums()
        for se in self.queue:
            if s >= se.vruntime * w and (best is None or (se.deadline, se.queue_seq) < (best.deadline, best.queue_seq)):
                best = se
        if best is None or (curr is not None and curr.deadline < best.deadline):
            best = curr
        return best

    def pick(self, now: int) -> SchedEntity | None:
        prev = self.curr
        if prev is not None and prev.on_rq:
            self.update_curr(now)
        while True:
            best = self._pick_eevdf(protect=True)
            if best is None:
                break
            if not best.sched_delayed:
                break
            self._finish_delayed(best, now)
        if best is not None and best is prev:
            return prev  # pick_next_task_fair skips set_next_entity: vprot is not renewed
        if prev is not None:
            self.put_prev(now)
        if best is None:
            return None
        self._set_next(best, now)
        self._set_protect_slice(best)
        return best

    # --- placement, enqueue and dequeue ------------------------------------------------------

    def _update_entity_lag(self, se: SchedEntity) -> None:
        lag = self.avg_vruntime() - se.vruntime
        limit = calc_delta_fair(max(2 * se.slice_ns, self.tick_ns), se.weight)
        se.vlag = max(-limit, min(limit, lag))

    def _place_entity(self, se: SchedEntity, *, initial: bool) -> None:
        vruntime = self.avg_vruntime()
        se.slice_ns = self.base_slice_ns
        vslice = calc_delta_fair(se.slice_ns, se.weight)
        lag = 0
        if self.nr_queued and se.vlag:
            _, load = self._sums()
            lag = _div_s64(se.vlag * (load + se.weight), max(load, 1))
        se.vruntime = vruntime - lag
        if se.rel_deadline:
            se.deadline += se.vruntime
            se.rel_deadline = False
            return
        if initial:
            vslice //= 2
        se.deadline = se.vruntime + vslice

    def enqueue(self, se: SchedEntity, now: int, why: Enqueue) -> None:
        if why is Enqueue.FORK:
            se.vlag = 0
        self.update_curr(now)
        self._place_entity(se, initial=why is Enqueue.FORK)
        self._account_enqueue(se)
        if se is not self.curr:
            self._insert(se)

    def dequeue(self, se: SchedEntity, now: int, *, sleep: bool) -> bool:
        self.update_curr(now)
        if sleep and not self.entity_eligible(se):
            se.sched_delayed = True
            self.nr_delayed += 1
            self.on_change()
            return False
        self._dequeue(se, sleep=sleep)
        return True

    def _dequeue(self, se: SchedEntity, *, sleep: bool) -> None:
        self._update_entity_lag(se)
        if not sleep:
            se.deadline -= se.vruntime
            se.rel_deadline = True
        if se is not self.curr:
            self._remove(se)
        self._account_dequeue(se)

    def _finish_delayed(self, se: SchedEntity, now: int) -> None:
        """A delayed entity is picked: its dequeue completes, positive lag dropped (DELAY_ZERO)."""
        self.update_curr(now)
        self._dequeue(se, sleep=True)
        se.sched_delayed = False
        self.nr_delayed -= 1
        self.on_change()
        if se.vlag > 0:
            se.vlag = 0

    def drop_delayed(self, se: SchedEntity, now: int) -> None:
        self._finish_delayed(se, now)

    def requeue_delayed(self, se: SchedEntity, now: int) -> None:
        self._update_entity_lag(se)
        if se.vlag > 0:
            self.nr_queued -= 1
            if se is not self.curr:
                self._remove(se)
            se.vlag = 0
            self._place_entity(se, initial=False)
            if se is not self.curr:
                self._insert(se)
            self.nr_queued += 1
        se.sched_delayed = False
        self.nr_delayed -= 1
        self.on_change()

    def detach(self, se: SchedEntity, now: int) -> None:
        self.update_curr(now)
        self._dequeue(se, sleep=False)

    # --- wake-up preemption --------------------------------------------------------------------

    def wakeup_preempt(self, se: SchedEntity, now: int, *, fork: bool) -> None:
        # WF_FORK and a still-delayed wakee matter only to NEXT_BUDDY (off): a forked task
        # preempts like any other when it is what pick_eevdf would run.
        if self.curr is None or self.curr is se or self.want_resched:
            return
        self.update_curr(now)
        if self._pick_eevdf(protect=True) is se:
            self.want_resched = True
