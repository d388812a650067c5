"""Tick accounting (kernel/sched/cputime.c) and /proc/stat formatting (fs/proc/stat.c)."""

from pvtime.guest.cputime import TickAccounting, nsec_to_clock_t

TICK = 4_000_000  # HZ=250


def test_tick_nsec_for_hz_250():
    assert TickAccounting(250).tick_nsec == TICK
    assert TickAccounting(100).tick_nsec == 10_000_000


def test_steal_is_taken_first_and_the_rest_goes_to_the_context():
    acc = TickAccounting()
    acc.account_process_tick(0, 1_000_000, user=True, idle=False)
    st = acc.stat(0)
    assert (st.steal, st.user, st.idle, st.system) == (1_000_000, 3_000_000, 0, 0)
    acc.account_process_tick(0, 1_500_000, user=False, idle=True)
    assert (st.steal, st.idle) == (1_500_000, 3_500_000)
    acc.account_process_tick(0, 1_500_000, user=False, idle=False)
    assert st.system == TICK


def test_a_tick_fully_covered_by_steal_is_consumed_and_all_steal_is_kept():
    acc = TickAccounting()
    acc.account_process_tick(0, 50_000_000, user=True, idle=False)  # maxtime is ULONG_MAX
    st = acc.stat(0)
    assert (st.steal, st.user) == (50_000_000, 0)
    assert acc.prev_steal_time[0] == 50_000_000


def test_maxtime_caps_the_steal_and_carries_the_rest():
    acc = TickAccounting()
    assert acc.steal_account_process_time(0, 10_000, maxtime=4_000) == 4_000
    assert acc.steal_account_process_time(0, 10_000, maxtime=4_000) == 4_000
    assert acc.steal_account_process_time(0, 10_000) == 2_000
    assert acc.stat(0).steal == 10_000


def test_proc_stat_lines_put_steal_eighth_in_user_hz():
    acc = TickAccounting()
    acc.account_process_tick(0, 30_000_000, user=True, idle=False)
    acc.account_process_tick(1, 1_000_000, user=True, idle=False)
    lines = acc.proc_stat().splitlines()
    assert lines[0].startswith("cpu  ")
    assert lines[1].split() == ["cpu0", "0", "0", "0", "0", "0", "0", "0", "3", "0", "0"]
    assert lines[2].split()[8] == "0"  # 1 ms of steal truncates to 0 USER_HZ
    assert lines[0].split()[8] == "3"
    assert nsec_to_clock_t(19_999_999) == 1


def test_linux_hotplug_wrap_makes_proc_stat_steal_go_backwards():
    # PV_TIME_ST on re-online zeroes the record but rq->prev_steal_time is kept: the u64 delta
    # wraps and cpustat[STEAL] (a u64) ends up lower than before.
    acc = TickAccounting()
    acc.account_process_tick(0, 80_000_000, user=True, idle=False)
    acc.account_process_tick(0, 1_000, user=True, idle=False)  # the clock restarted at 0
    assert acc.stat(0).steal == 1_000 < 80_000_000


def test_resetting_prev_steal_on_online_keeps_steal_monotonic():
    acc = TickAccounting()
    acc.account_process_tick(0, 80_000_000, user=True, idle=False)
    acc.reset_prev_steal(0)
    acc.account_process_tick(0, 1_000, user=True, idle=False)
    assert acc.stat(0).steal == 80_001_000


def test_per_cpu_lines_only_for_online_cpus_but_the_sum_over_all():
    acc = TickAccounting()
    acc.account_process_tick(0, 20_000_000, user=True, idle=False)
    acc.account_process_tick(1, 30_000_000, user=True, idle=False)
    lines = acc.proc_stat(online={0}).splitlines()
    assert [l.split()[0] for l in lines] == ["cpu", "cpu0"]
    assert lines[0].split()[8] == "5"
