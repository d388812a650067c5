"""The run-queue clock's steal subtraction (update_rq_clock_task in kernel/sched/core.c)."""

from __future__ import annotations

from pvtime.abi.widths import U64, s64



class RqClock:
    """rq->clock_task for one CPU: wall time minus the steal that happened in it.

    `steal_acc` is False when the guest booted with `no-steal-acc`. `carry_excess` selects the
    behaviour before Linux 6.13, where steal beyond `delta` was carried to the next update.
    """

    def __init__(self, *, steal_acc: bool = True, carry_excess: bool = False) -> None:
        self.steal_acc = steal_acc
        self.carry_excess = carry_excess
        self.clock = 0  # rq->clock
        self.clock_task = 0
        self.prev_steal_time_rq = 0

    def update(self, now: int, steal_clock: int) -> None:
        """update_rq_clock at `now` (ns), with the CPU's steal clock read now."""
        delta = now - self.clock
        if delta < 0:
            return
        self.clock = now
        if self.steal_acc:
            # s64 in Linux: a steal clock that went backwards (PV_TIME_ST on re-online) gives a
            # negative steal, which moves clock_task forward.
            steal = s64(steal_clock - self.prev_steal_time_rq)
            steal = min(steal, delta)
            if self.carry_excess:
                self.prev_steal_time_rq = (self.prev_steal_time_rq + steal) & U64
            else:
                self.prev_steal_time_rq = steal_clock
            delta -= steal
        self.clock_task += delta

    def reset_steal_baseline(self) -> None:
        """Forget the steal baseline (pvtime's fix for PV_TIME_ST zeroing on re-online)."""
        self.prev_steal_time_rq = 0

