"""The host scheduler core: ticks, shares by weight, wake-ups, affinity, schedstat bookkeeping.

Each analytic case runs under both policies (EEVDF, Linux >= 6.6; CFS, Linux <= 6.5) and names
the kernel/sched/fair.c behaviour it checks.
"""

from __future__ import annotations

import pytest

from pvtime.host import (
    CfsTunables, CpuHog, EevdfTunables, EventLoop, Host, PeriodicBurst, PeriodicTask, SchedConfig, Scheduler,
    Step, Task, TaskState,
)
from pvtime.host.sched_config import tunable_factor
from pvtime.host.weights import NICE_0_LOAD, SCHED_PRIO_TO_WEIGHT, calc_delta_fair, weight_of

MS = 1_000_000
SEC = 1_000_000_000
POLICIES = ["eevdf", "cfs"]


class Segments:
    """Records every segment (cpu, task name, start, end, switched in)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, int, int, bool]] = []

    def on_segment(self, host, cpu, task, start_ns, end_ns, switched_in) -> None:  # type: ignore[no-untyped-def]
        self.rows.append((cpu, task.name, start_ns, end_ns, switched_in))

    def on_wake(self, host, task, at_ns, cpu) -> None:  # type: ignore[no-untyped-def]
        pass


def make(ncpus: int = 1, duration: int = SEC, config: SchedConfig | None = None, **kw: object):  # type: ignore[no-untyped-def]
    loop = EventLoop()
    host = Host(ncpus=ncpus)
    seen = Segments()
    sched = Scheduler(host, loop, config, end_ns=duration, observer=seen, **kw)  # type: ignore[arg-type]
    return loop, host, sched, seen


def finish(loop: EventLoop, sched: Scheduler, duration: int = SEC) -> None:
    loop.run(duration)
    sched.finish()


def test_weight_table_is_linux() -> None:
    assert len(SCHED_PRIO_TO_WEIGHT) == 40
    assert weight_of(0) == NICE_0_LOAD == 1024
    assert weight_of(-20) == 88761 and weight_of(19) == 15
    assert calc_delta_fair(1000, 1024) == 1000 and calc_delta_fair(1000, 2048) == 500
    with pytest.raises(ValueError, match="nice"):
        weight_of(20)


def test_tunables_scale_with_log2_cpus() -> None:
    """get_update_sysctl_factor (SCHED_TUNABLESCALING_LOG): 1 + ilog2(min(ncpus, 8))."""
    assert [tunable_factor(n) for n in (1, 2, 3, 4, 8, 64)] == [1, 2, 2, 3, 4, 4]
    assert EevdfTunables().scaled(2).base_slice_ns == 1_400_000
    assert CfsTunables().scaled(4).latency_ns == 18 * MS


def test_config_is_validated() -> None:
    assert SchedConfig(hz=250).tick_ns == 4 * MS and SchedConfig(hz=300).tick_ns == 3_333_333
    with pytest.raises(ValueError, match="hz"):
        SchedConfig(hz=200)
    with pytest.raises(ValueError, match="policy"):
        SchedConfig(policy="bfs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="6.13"):
        SchedConfig(policy="cfs", preempt="lazy")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("hz", [250, 1000])
def test_k_hogs_share_one_cpu_and_switch_at_ticks(policy: str, hz: int) -> None:
    """K hogs on one CPU: each waits (K-1)/K of the time. The slice is used up between ticks and
    the host notices at the tick (EEVDF: update_curr from sched_tick; CFS: check_preempt_tick),
    so a timeslice is a whole number of ticks."""
    k = 3
    config = SchedConfig(policy=policy, hz=hz)  # type: ignore[arg-type]
    loop, host, sched, seen = make(config=config)
    tasks = [host.spawn(f"h{i}") for i in range(k)]
    for t in tasks:
        sched.add(t, CpuHog())
    finish(loop, sched)
    tick = config.tick_ns
    for t in tasks:
        assert t.run_delay_ns / SEC == pytest.approx((k - 1) / k, abs=0.01)
    starts = sorted(s for _, _, s, _, sw in seen.rows if sw)
    assert all(s % tick == 0 for s in starts[k:])  # after the first round every switch is at a tick
    if policy == "eevdf":  # base slice 0.75 ms < one tick: every tick switches
        per_task = hz / k
    else:  # CFS: ideal slice latency/3 = 2 ms, preempted at the first tick past it
        ideal = 6 * MS // k
        per_task = SEC / (k * tick * (ideal // tick + 1))
    for t in tasks:
        assert t.timeslices == pytest.approx(per_task, rel=0.03)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("nice", [1, 5])
def test_nice_sets_the_share(policy: str, nice: int) -> None:
    loop, host, sched, _ = make(config=SchedConfig(policy=policy))  # type: ignore[arg-type]
    a, b = host.spawn("nice0"), host.spawn(f"nice{nice}")
    sched.add(a, CpuHog())
    sched.add(b, CpuHog(), nice=nice)
    finish(loop, sched)
    expected = weight_of(0) / weight_of(nice)
    assert a.run_time_ns / b.run_time_ns == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_woken_task_on_a_busy_cpu_starts_within_the_policy_bound(policy: str) -> None:
    """A task woken next to a hog runs within one tick: EEVDF lets the hog finish its protected
    slice (RUN_TO_PARITY; 0.75 ms here) and the host reschedules at the next tick; CFS preempts
    at once when the sleeper credit (latency/2) beats the wake-up granularity."""
    loop, host, sched, seen = make(config=SchedConfig(policy=policy))  # type: ignore[arg-type]
    hog, job = host.spawn("hog"), host.spawn("job")
    sched.add(hog, CpuHog())
    sched.add(job, PeriodicTask(200_000, 10 * MS, phase_ns=1_300_000))
    finish(loop, sched)
    assert job.run_time_ns == 100 * 200_000
    waits = [s - (1_300_000 + k * 10 * MS) for k, (_, _, s, _, sw) in
             enumerate(r for r in seen.rows if r[1] == "job" and r[4])]
    assert all(0 <= w <= 4 * MS for w in waits)
    if policy == "cfs":
        assert max(waits[1:]) == 0  # GENTLE_FAIR_SLEEPERS: the credit preempts on the spot
    else:
        assert sum(waits) > 0  # EEVDF: no sleeper credit; the hog's slice is protected


def test_without_wakeup_preemption_the_sleeper_waits() -> None:
    """CFS wakeup_preempt_entity: a granularity larger than the credit never preempts."""
    config = SchedConfig(policy="cfs", cfs=CfsTunables(wakeup_granularity_ns=10 * SEC))
    loop, host, sched, _ = make(config=config)
    hog, job = host.spawn("hog"), host.spawn("job")
    sched.add(hog, CpuHog())
    sched.add(job, PeriodicBurst(burst_ns=200_000, period_ns=10 * MS, phase_ns=MS))
    finish(loop, sched)
    assert job.run_delay_ns > 50 * MS


@pytest.mark.parametrize("policy", POLICIES)
def test_affinity_is_respected_and_a_pinned_task_alone_never_waits(policy: str) -> None:
    loop, host, sched, seen = make(ncpus=2, config=SchedConfig(policy=policy))  # type: ignore[arg-type]
    tasks = [host.spawn(f"hog{i}") for i in range(3)]
    for t in tasks:
        sched.add(t, CpuHog(), cpus=[0])
    alone = host.spawn("alone")
    sched.add(alone, CpuHog(), cpus=[1])
    finish(loop, sched)
    assert {cpu for cpu, name, *_ in seen.rows if name.startswith("hog")} == {0}
    assert {cpu for cpu, name, *_ in seen.rows if name == "alone"} == {1}
    assert alone.run_delay_ns == 0 and alone.run_time_ns == SEC
    assert sum(t.run_time_ns for t in tasks) == SEC


def test_segments_never_overlap_and_never_pass_a_tick() -> None:
    loop, host, sched, seen = make(ncpus=2)
    tasks = [host.spawn(f"t{i}") for i in range(4)]
    for i, t in enumerate(tasks):
        sched.add(t, CpuHog(duty=0.5, period_ns=10 * MS, phase_ns=i * 2_500_000))
    finish(loop, sched)
    for cpu in (0, 1):
        spans = sorted((s, e) for c, _, s, e, _ in seen.rows if c == cpu)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    for _, _, s, e, _ in seen.rows:
        assert e // (4 * MS) == s // (4 * MS) or e % (4 * MS) == 0  # no segment crosses a tick
    per_task: dict[str, list[tuple[int, int]]] = {}
    for _, name, s, e, _ in seen.rows:
        per_task.setdefault(name, []).append((s, e))
    for spans in per_task.values():
        spans.sort()
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert sum(t.run_time_ns for t in tasks) == pytest.approx(2 * SEC, rel=0.02)


class _WakesAt:
    """Computes until `at`, wakes `other` there (as PSCI CPU_ON does), then computes on."""

    def __init__(self, sched: Scheduler, at: int) -> None:
        self.sched, self.at, self.other, self.woke_at = sched, at, None, None  # type: ignore[var-annotated]

    def step(self, slice_):  # type: ignore[no-untyped-def]
        if self.woke_at is None and slice_.now_ns >= self.at:
            self.woke_at = slice_.now_ns
            self.sched.wake(self.other)
        elif self.woke_at is None:
            slice_.advance(min(self.at - slice_.now_ns, slice_.remaining_ns))
            return Step(TaskState.QUEUED)
        slice_.advance(slice_.remaining_ns)
        return Step(TaskState.QUEUED)


class _Sleeper:
    def __init__(self) -> None:
        self.runs: list[int] = []

    def step(self, slice_):  # type: ignore[no-untyped-def]
        self.runs.append(slice_.now_ns)
        slice_.advance(slice_.remaining_ns)
        return Step(TaskState.QUEUED) if len(self.runs) > 1 else Step(TaskState.SLEEPING, None)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_wake_up_from_running_code_is_processed_at_its_instant(policy: str) -> None:
    """A body that wakes a task mid-segment (CPU_ON) ends its segment there: try_to_wake_up and
    wakeup_preempt run at that instant, not at the end of a long segment."""
    loop, host, sched, seen = make(config=SchedConfig(policy=policy))  # type: ignore[arg-type]
    waker_task, other_task = host.spawn("waker"), host.spawn("other")
    waker = _WakesAt(sched, 10 * MS + 123_456)
    sleeper = _Sleeper()
    waker.other = other_task  # type: ignore[assignment]
    sched.add(other_task, sleeper)
    sched.add(waker_task, waker, start_ns=MS)
    finish(loop, sched, 40 * MS)
    assert waker.woke_at == 10 * MS + 123_456
    assert any(e == waker.woke_at for _, name, _, e, _ in seen.rows if name == "waker")
    # the woken task runs within a tick, and from then on the waker waits its turn
    assert sleeper.runs[1] - waker.woke_at <= 4 * MS
    assert waker_task.run_delay_ns > 10 * MS
    assert sched.late_reschedules == 0


def test_explicit_wake_of_a_blocked_task() -> None:
    class OneShot:
        def __init__(self) -> None:
            self.runs = 0

        def step(self, slice_):  # type: ignore[no-untyped-def]
            self.runs += 1
            slice_.advance(1000)
            return Step(TaskState.SLEEPING, None)  # blocks until woken

    loop, host, sched, _ = make()
    task = host.spawn("sleeper")
    body = OneShot()
    sched.add(task, body)
    loop.run(10 * MS)
    assert body.runs == 1
    sched.wake(task)
    loop.run(20 * MS)
    assert body.runs == 2 and task.run_delay_ns == 0


def _mixed_load(sched: Scheduler, host: Host) -> None:
    """Hogs, a task polling its CPU clock, and sleepers whose wake-ups land on busy CPUs."""
    for i in range(3):
        sched.add(host.spawn(f"hog{i}"), CpuHog(duty=0.7, period_ns=7 * MS, phase_ns=i * MS))
    sched.add(host.spawn("per"), PeriodicTask(MS, 5 * MS, 300_000))
    sched.add(host.spawn("burst"), PeriodicBurst(2 * MS, 9 * MS, 500_000))
    sched.add(host.spawn("burst2"), PeriodicBurst(3 * MS, 11 * MS, 100_000))


@pytest.mark.parametrize("policy", POLICIES)
def test_internal_segment_bound_changes_nothing(policy: str) -> None:
    """max_segment_ns only splits body calls: schedstat and segments are identical."""
    results = []
    for bound in (None, 130_001):
        loop, host, sched, seen = make(ncpus=2, config=SchedConfig(policy=policy), max_segment_ns=bound)  # type: ignore[arg-type]
        _mixed_load(sched, host)
        finish(loop, sched, 300 * MS)
        results.append(([t.schedstat() for t in host.tasks], seen.rows))
    assert results[0] == results[1]


@pytest.mark.parametrize("policy", POLICIES)
def test_where_the_event_loop_stops_changes_nothing(policy: str) -> None:
    """Running the event loop in short steps (a progress display, a sampler) changes nothing, not
    even the segments: a stop is no decision point. Ending the segments there would be one Linux
    does not have, where a polling task's charge (update_curr) or a reschedule requested
    mid-segment (a wake-up's wakeup_preempt, a balancer's pull) acts earlier than at the
    segment's end."""
    runs = []
    for steps in (False, True):
        loop, host, sched, seen = make(ncpus=2, config=SchedConfig(policy=policy))  # type: ignore[arg-type]
        _mixed_load(sched, host)
        if steps:
            for t in range(1_100_000, 300 * MS, 1_100_000):
                loop.run(t)
        finish(loop, sched, 300 * MS)
        runs.append(([t.schedstat() for t in host.tasks], seen.rows, sched.late_reschedules))
    assert runs[0] == runs[1]


def test_bad_affinity_is_refused() -> None:
    loop, host, sched, _ = make(ncpus=2)
    with pytest.raises(ValueError, match=r"CPU\(s\) \[5\]"):
        sched.add(host.spawn("x"), CpuHog(), cpus=[5])
    with pytest.raises(ValueError, match="empty"):
        sched.add(host.spawn("y"), CpuHog(), cpus=[])


def test_periodic_bodies_validate() -> None:
    with pytest.raises(ValueError, match="burst_ns"):
        PeriodicBurst(burst_ns=20, period_ns=10)
    with pytest.raises(ValueError, match="work_ns"):
        PeriodicTask(work_ns=20, period_ns=10)


def test_periodic_task_skips_missed_releases() -> None:
    """A release that passed while the task worked is skipped, not replayed: on a CPU shared
    with a hog, a task needing 3 ms every 4 ms misses releases instead of piling up work."""
    loop, host, sched, _ = make()
    hog, per = host.spawn("hog"), host.spawn("per")
    body = PeriodicTask(3 * MS, 4 * MS)
    sched.add(hog, CpuHog())
    sched.add(per, body)
    finish(loop, sched)
    assert body.missed > 0
    assert per.run_time_ns <= (SEC // (4 * MS) - body.missed) * 3 * MS


def test_fork_places_on_an_idle_cpu() -> None:
    loop, host, sched, seen = make(ncpus=4)
    for i in range(4):
        sched.add(host.spawn(f"h{i}"), CpuHog())
    finish(loop, sched, 20 * MS)
    assert sorted({(c, n) for c, n, *_ in seen.rows}) == [(0, "h0"), (1, "h1"), (2, "h2"), (3, "h3")]
    assert all(t.run_delay_ns == 0 for t in host.tasks)


def test_task_is_not_reused() -> None:
    loop, host, sched, _ = make()
    t = host.spawn("x")
    sched.add(t, CpuHog())
    with pytest.raises(ValueError, match="already"):
        sched.add(t, CpuHog())
    assert isinstance(t, Task)


def _first_run_after_remote_wake(preempt: str, wake_at: int) -> int:
    """A nice -5 task pinned beside a hog on CPU 0 is woken by an event of no CPU (as the VMM
    resuming a vCPU is) at `wake_at`; when does it first run?"""
    loop, host, sched, seen = make(ncpus=2, config=SchedConfig(preempt=preempt))  # type: ignore[arg-type]
    hog, task = host.spawn("hog"), host.spawn("woken")
    body = _Sleeper()
    sched.add(task, body, nice=-5, cpus=[0])
    sched.add(hog, CpuHog(), cpus=[0], start_ns=MS)
    loop.at(wake_at, 1, lambda: sched.wake(task))
    finish(loop, sched, 60 * MS)
    return body.runs[1]


@pytest.mark.parametrize("wake_at", [30 * MS + 2_300_000, 40 * MS + 700_000])
def test_lazy_preemption_waits_for_the_tick_on_a_remote_cpu(wake_at: int) -> None:
    """resched_curr_lazy: with preempt=none/voluntary/full a wake-up preemption from another CPU
    sets TIF_NEED_RESCHED and sends an IPI (it acts at once); with preempt=lazy it sets
    TIF_NEED_RESCHED_LAZY without an IPI, which the target acts on at its next tick."""
    at_once = _first_run_after_remote_wake("none", wake_at)
    lazy = _first_run_after_remote_wake("lazy", wake_at)
    assert at_once == wake_at  # the heavier woken task's earlier deadline wins at once
    assert lazy == (wake_at // (4 * MS) + 1) * 4 * MS
    assert _first_run_after_remote_wake("voluntary", wake_at) == _first_run_after_remote_wake("full", wake_at) == at_once
