"""The tick as kernel/time/tick-sched.c runs it (Linux v6.18), for the model kernel.

Each CPU's tick is a high-resolution timer (`sched_timer`) on the clock event device, the CPU's
virtual timer (CNTV). It fires every 1/HZ on a fixed grid, and when it fires late it moves to the
first grid point after now (`hrtimer_forward`), so ticks missed while the vCPU did not run are
skipped, not replayed.

With NO_HZ_IDLE (arm64's default, `KernelOptions.nohz_idle`), an idle CPU stops its tick
(`tick_nohz_idle_stop_tick`): the clock event is programmed for the next real event instead --
here the hrtimer that wakes the task the idle period waits for -- and with nothing armed the
device is stopped (CTL.ENABLE = 0, as clockevents' ONESHOT_STOPPED state makes arch_timer do).
Leaving idle (`tick_nohz_idle_exit`), the tick restarts on its grid (`tick_nohz_restart`:
forwarded from the expiry it had when stopped) and the jiffies that passed are accounted as idle
at once (`tick_nohz_account_idle_time` -> `account_idle_ticks`, steal first).

Simplified: jiffies is each CPU's own tick grid (in Linux, one global jiffies that the CPUs'
aligned grids update); no timer-wheel timer, RCU callback, irq_work or pending softirq ever keeps
the tick running, so it is stopped at every idle entry (a KVM guest without cpuidle states stops
it from `cpuidle_idle_call` unconditionally); the `idle_sleeptime` counters are not kept, so
/proc/stat's idle column is kcpustat's (fs/proc/stat.c `get_idle_time` prefers the NO_HZ counters
in Linux).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvtime.abi.sysregs import CNTV_CTL_EL0, CTL_ENABLE
from pvtime.guest.lpt import Clocksource
from pvtime.guest.machine import GuestCpu


@dataclass
class TickSched:
    """struct tick_sched of one CPU, as far as the model needs it; times in clocksource counts."""

    next_tick: int  # the sched_timer's expiry; while stopped, the expiry it had (ts->last_tick)
    stopped: bool = False  # TS_FLAG_STOPPED: no tick while idle
    wakeup: int | None = None  # the idle period's wake-up hrtimer, while armed
    event_on: bool = False  # CNTV_CTL.ENABLE as last written

    def expired(self, now: int) -> tuple[bool, bool]:
        """(the tick is due, the wake-up is due) at `now`."""
        return (not self.stopped and self.next_tick <= now,
                self.wakeup is not None and self.wakeup <= now)


def hrtimer_forward(expires: int, now: int, interval: int) -> tuple[int, int]:
    """Move `expires` past `now` by whole intervals; returns (new expiry, intervals skipped)."""
    if now < expires:
        return expires, 0
    overruns = (now - expires) // interval + 1
    return expires + overruns * interval, overruns


def program_event(cpu: GuestCpu, clock: Clocksource, ts: TickSched) -> None:
    """clockevents_program_event: CNTV fires at the earliest armed timer, or is stopped."""
    first = None if ts.stopped else ts.next_tick
    wakeup = ts.wakeup
    if wakeup is not None and (first is None or wakeup < first):
        first = wakeup
    if first is None:
        if ts.event_on:
            cpu.msr(CNTV_CTL_EL0, 0)
            ts.event_on = False
        return
    clock.set_cval(cpu, first)
    if not ts.event_on:
        cpu.msr(CNTV_CTL_EL0, CTL_ENABLE)
        ts.event_on = True
