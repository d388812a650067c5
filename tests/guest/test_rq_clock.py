"""update_rq_clock_task's steal subtraction, and the no-steal-acc boot option."""

from pvtime.guest.rq_clock import RqClock


def test_steal_is_subtracted_from_clock_task():
    rq = RqClock()
    rq.update(10_000, 3_000)
    assert (rq.clock, rq.clock_task) == (10_000, 7_000)


def test_no_steal_acc_leaves_clock_task_alone():
    rq = RqClock(steal_acc=False)
    rq.update(10_000, 3_000)
    assert rq.clock_task == 10_000


def test_since_6_13_excess_steal_is_dropped():
    rq = RqClock()
    rq.update(1_000, 5_000)  # more steal than elapsed time
    assert rq.clock_task == 0 and rq.prev_steal_time_rq == 5_000
    rq.update(2_000, 5_000)
    assert rq.clock_task == 1_000  # the excess 4000 is not taken again


def test_before_6_13_excess_steal_is_carried_forward():
    rq = RqClock(carry_excess=True)
    rq.update(1_000, 5_000)
    assert rq.clock_task == 0 and rq.prev_steal_time_rq == 1_000
    rq.update(2_000, 5_000)
    assert rq.clock_task == 0  # another 1000 of the carried steal


def test_clock_task_plus_steal_equals_clock_when_steal_fits():
    rq = RqClock()
    steal = 0
    for t in range(1, 11):
        steal += 300
        rq.update(t * 1_000, steal)
    assert rq.clock_task + steal == rq.clock


def test_a_steal_clock_that_goes_backwards_gives_negative_steal_as_linuxs_s64():
    # PV_TIME_ST on re-online zeroes the record: steal - prev is negative, and Linux's s64 arithmetic
    # adds it back to clock_task rather than freezing the clock.
    for carry in (False, True):
        rq = RqClock(carry_excess=carry)
        rq.update(1_000_000, 500_000)
        assert rq.clock_task == 500_000
        rq.update(2_000_000, 0)  # the clock restarted
        assert rq.clock_task == 500_000 + 1_000_000 + 500_000
        rq.update(3_000_000, 100)
        assert rq.clock_task == 3_000_000 - 100


def test_a_zero_delta_still_updates_the_steal_baseline():
    rq = RqClock()
    rq.update(1_000, 0)
    rq.update(1_000, 700)  # delta 0: steal is capped at 0 but the baseline moves (6.13+)
    assert rq.clock_task == 1_000 and rq.prev_steal_time_rq == 700
