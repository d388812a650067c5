"""Task schedstat accounting (kernel/sched/stats.h): run_delay grows at sched_info_arrive, and
`run_delay_at` counts a wait in progress as it passes."""

from pvtime.host.task import Task


def test_run_delay_counts_a_wait_at_the_arrival_and_run_delay_at_as_it_passes() -> None:
    task = Task(1, "vcpu")
    task.enqueue(100)  # woken: sched_info_enqueue notes the time
    assert task.run_delay_ns == 0 and task.run_delay_at(130) == 30
    task.arrive(150)  # sched_info_arrive adds the whole wait at once
    assert task.run_delay_ns == 50 and task.run_delay_at(170) == 50  # running: nothing in progress
    task.depart(200, runnable=True)  # preempted: queued again
    assert task.run_delay_at(260) == 110 and task.run_delay_at(190) == 50  # never before the enqueue
    task.arrive(300)
    task.depart(320, runnable=False)  # asleep: no wait
    assert task.run_delay_ns == 150 and task.run_delay_at(1000) == 150
