"""The model kernel's tick with NO_HZ_IDLE and with periodic ticks (kernel/time/tick-sched.c:
tick_nohz_idle_stop_tick, tick_nohz_idle_exit, tick_nohz_restart, tick_nohz_account_idle_time;
kernel/sched/cputime.c: account_idle_ticks, account_process_tick).

One vCPU alone on its host, HZ = 250 (a 4 ms tick), the counter at 25 MHz, so guest time is host
time: the tick's grid is 4, 8, 12 ... ms from boot at 0.
"""

from __future__ import annotations

import pytest

from pvtime.abi.uapi import KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL
from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.guest.tick_sched import hrtimer_forward
from pvtime.kvm import Exit, HaltExit
from tests.conftest import make_env

MS = 1_000_000
TICK = 4 * MS
COUNTS_PER_MS = 25_000


class Solo:
    """vCPU 0 of a model VM, its thread alone on the host: it runs when runnable, sleeps when halted."""

    def __init__(self, busy_ms: float, idle_ms: float, *, nohz_idle: bool = True) -> None:
        self.env = make_env(1)
        busy, idle = int(busy_ms * MS), int(idle_ms * MS)
        self.kernel = ModelKernel(KernelOptions(hz=250, nohz_idle=nohz_idle,
                                                workload=Workload(busy_ns=(busy, busy), idle_ns=(idle, idle))))
        self.env.machine.load_model_guest(self.kernel)
        self.host, self.task, self.vcpu = self.env.host, self.env.tasks[0], self.env.vcpu(0)
        self.halts: list[tuple[int, int | None]] = []  # (halted at, wake-up) of each HaltExit

    def run(self, budget_ns: int) -> Exit:
        """One KVM_RUN from now for at most `budget_ns`."""
        with self.host.on_cpu(self.task, budget_ns) as slice_:
            ex = self.vcpu.run()
            if isinstance(ex, HaltExit):
                self.task.depart(slice_.now_ns, runnable=False)
                self.halts.append((slice_.now_ns, ex.wake_at_ns))
        return ex

    def until(self, t_ns: int) -> None:
        """Run until `t_ns` (host time), sleeping through halts."""
        while self.host.clock_ns < t_ns:
            ex = self.run(t_ns - self.host.clock_ns)
            if isinstance(ex, HaltExit):
                assert ex.wake_at_ns is not None
                self.host.idle(min(ex.wake_at_ns, t_ns) - self.host.clock_ns)

    def stat(self) -> tuple[int, int, int, int]:
        st = self.kernel.ticks.stat(0)
        return st.user, st.system, st.idle, st.steal


def test_hrtimer_forward_skips_to_the_first_expiry_after_now() -> None:
    assert hrtimer_forward(100, 99, 10) == (100, 0)
    assert hrtimer_forward(100, 100, 10) == (110, 1)
    assert hrtimer_forward(100, 135, 10) == (140, 4)


def test_nohz_idle_stops_the_tick_and_wakes_only_for_the_end_of_idle() -> None:
    # busy 0-1 ms, idle 1-21, busy 21-22, idle 22-42, busy 42-43, idle 43-63, busy 63-64, idle 64-84.
    solo = Solo(1, 20)
    solo.until(85 * MS)
    # One halt per idle period, woken exactly at its end: no tick in between.
    assert solo.halts == [(1 * MS, 21 * MS), (22 * MS, 42 * MS), (43 * MS, 63 * MS), (64 * MS, 84 * MS)]
    # The only tick taken is the one at 64 ms, in a busy period; 4 wake-ups besides.
    assert solo.kernel.tick_count == {0: 1}
    assert solo.kernel.timer.fires == 5
    # 21 jiffies have passed at 84 ms: the one tick is user time, the 20 idle jiffies (5 per idle
    # period, accounted when it ended) are idle time.
    assert solo.stat() == (TICK, 0, 20 * TICK, 0)


def test_the_idle_cpus_timer_is_the_wake_up_and_the_tick_restarts_on_its_grid() -> None:
    solo = Solo(1, 20)
    solo.until(5 * MS)  # idle since 1 ms: the tick (due at 4 ms) is stopped
    assert solo.vcpu.get_one_reg(KVM_REG_ARM_TIMER_CVAL) == 21 * COUNTS_PER_MS
    assert solo.vcpu.get_one_reg(KVM_REG_ARM_TIMER_CTL) & 1
    solo.until(21 * MS + MS // 2)  # woke at 21 ms: the tick is back at 24 ms, not 21 + 4
    assert solo.vcpu.get_one_reg(KVM_REG_ARM_TIMER_CVAL) == 24 * COUNTS_PER_MS
    assert solo.stat() == (0, 0, 5 * TICK, 0)  # jiffies 4, 8, 12, 16, 20


def test_steal_seen_when_idle_ends_is_accounted_then_and_taken_from_the_idle_jiffies() -> None:
    solo = Solo(1, 20)
    solo.until(21 * MS)  # halted until 21 ms
    solo.host.hold(solo.task, 6 * MS)  # woken at 21 ms, the thread waits runnable until 27 ms
    solo.run(MS // 2)  # runs 27 - 27.5 ms: the idle exit, then busy, no tick yet
    # 6 jiffies (4 ... 24 ms) are 24 ms; the 6 ms of steal go first (account_idle_ticks).
    assert solo.stat() == (0, 0, 18 * MS, 6 * MS)
    assert solo.task.run_delay_ns == 6 * MS


def test_steal_seen_when_a_short_idle_ends_waits_for_the_next_tick() -> None:
    # busy 0-1 ms, idle 1-3 ms: no jiffy passes, so leaving idle accounts nothing.
    solo = Solo(1, 2)
    solo.until(3 * MS)
    solo.host.hold(solo.task, MS // 2)
    solo.run(MS // 4)  # 3.5 - 3.75 ms
    assert solo.stat() == (0, 0, 0, 0)
    solo.run(MS // 2)  # the tick at 4 ms sees the steal (steal_account_process_time)
    assert solo.stat() == (TICK - MS // 2, 0, 0, MS // 2)


def test_periodic_ticks_wake_the_idle_cpu_every_tick() -> None:
    # CONFIG_HZ_PERIODIC: an idle period ends at the first tick after its end, 24 ms here.
    solo = Solo(1, 20, nohz_idle=False)
    solo.until(24 * MS + MS // 2)
    assert [wake for _, wake in solo.halts] == [t * MS for t in (4, 8, 12, 16, 20, 24)]
    assert solo.kernel.tick_count == {0: 6}
    assert solo.stat() == (0, 0, 6 * TICK, 0)


@pytest.mark.parametrize("nohz_idle", [True, False])
def test_without_steal_proc_stat_accounts_every_jiffy_once(nohz_idle: bool) -> None:
    solo = Solo(5, 7, nohz_idle=nohz_idle)
    solo.until(301 * MS)  # in a busy period (300 - 305 ms): every jiffy so far is accounted
    ts = solo.kernel.tick_sched[0]
    assert not ts.stopped
    jiffies = (ts.next_tick // COUNTS_PER_MS * MS) // TICK - 1  # the tick grid points passed
    user, system, idle, steal = solo.stat()
    assert steal == system == 0 and user > 0 and idle > 0
    assert user + idle == jiffies * TICK
