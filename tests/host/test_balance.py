"""Load balancing across CPUs when tasks are pinned: kernel/sched/fair.c at v6.18."""

from __future__ import annotations

from pvtime.host import CpuHog, EventLoop, Host, Scheduler, Slice, Step, TaskState

MS = 1_000_000


class RunsThenExits:
    """Spins until `until_ns`, then exits."""

    def __init__(self, until_ns: int) -> None:
        self.until_ns = until_ns

    def step(self, slice_: Slice) -> Step:
        slice_.advance(min(self.until_ns - slice_.now_ns, slice_.remaining_ns))
        return Step(TaskState.EXITED if slice_.now_ns >= self.until_ns else TaskState.QUEUED)


class Cpus:
    """Records on which CPU each task ran, and when."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, int, int]] = []

    def on_segment(self, host, cpu, task, start_ns, end_ns, switched_in) -> None:  # type: ignore[no-untyped-def]
        self.rows.append((cpu, task.name, start_ns, end_ns))

    def on_wake(self, host, task, at_ns, cpu) -> None:  # type: ignore[no-untyped-def]
        pass


def test_an_idle_cpu_pulls_past_a_busier_cpu_whose_tasks_are_all_pinned() -> None:
    """sched_balance_rq (LBF_ALL_PINNED, `goto redo`): CPU 2 is the busiest (three hogs), but all
    are pinned to it; CPU 0 carries two hogs free to use CPUs 0-1. When CPU 1 is left idle, its
    balance must skip CPU 2 and take a hog from CPU 0 (sched_balance_newidle at once), instead of
    leaving CPU 1 idle while a hog waits on CPU 0."""
    loop, host = EventLoop(), Host(ncpus=3)
    seen = Cpus()
    end = 200 * MS
    sched = Scheduler(host, loop, end_ns=end, observer=seen)
    for i in range(3):
        sched.add(host.spawn(f"pinned{i}"), CpuHog(), cpus=[2])
    # a heavier task holds CPU 1 until 50 ms, so both free hogs start on CPU 0 (the least loaded)
    sched.add(host.spawn("occupier"), RunsThenExits(50 * MS), nice=-5, cpus=[1])
    free = [host.spawn(f"free{i}") for i in range(2)]
    for t in free:
        sched.add(t, CpuHog(), cpus=[0, 1])
    loop.run(end)
    sched.finish()
    assert {c for c, n, s, e in seen.rows if n.startswith("free") and s < 50 * MS} == {0}
    after = [(c, n, s) for c, n, s, e in seen.rows if n.startswith("free") and s >= 50 * MS]
    assert min(s for c, _, s in after if c == 1) == 50 * MS  # pulled when CPU 1 went idle
    assert {n for c, n, _ in after if c == 1} and {n for c, n, _ in after if c == 0}
    # from then on each free hog has a CPU of its own: both run the whole remaining time
    on_1 = sum(min(e, end) - max(s, 50 * MS) for c, n, s, e in seen.rows if c == 1 and n.startswith("free")
               and e > 50 * MS)
    assert on_1 == end - 50 * MS
    assert sum(t.run_time_ns for t in free) >= 50 * MS + 2 * (end - 50 * MS)
