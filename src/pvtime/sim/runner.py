"""Run a scenario: build its world (`sim.build`), advance virtual time to its end, and collect
the results (`sim.collect`)."""

from __future__ import annotations

from collections.abc import Callable

from pvtime.host import EventCore, EventLoop
from pvtime.sim.build import MS, build
from pvtime.sim.collect import collect
from pvtime.sim.recorder import CATEGORIES
from pvtime.sim.results import ClockRow, MigrationRow, MigrationStatus, RunResult, TaskRow, VcpuRow, VmRow
from pvtime.sim.scenario import Scenario

Progress = Callable[[int, int], None]


def run(scenario: Scenario, progress: Progress | None = None, *, core: EventCore | None = None,
        max_segment_ns: int | None = None, stop_at_ns: int | None = None) -> RunResult:
    """Run `scenario` to its end; `progress(now_ns, duration_ns)` is called as virtual time advances.

    `core` replaces the default event loop (bench/bench_sim.py drives the same run with SimPy);
    `max_segment_ns` splits the execution of task bodies (an internal limit: results do not change).
    `stop_at_ns` ends the run there instead -- the schedulers end there, the world and the sample
    grid stay the scenario's -- with the results a run reports at its end: stopped at a sample
    time, the run is an exact prefix of the whole one, which is how the tests check each sample.
    """
    if core is None:
        core = EventLoop()
    duration = scenario.spec.duration_ms * MS
    end = duration if stop_at_ns is None else stop_at_ns
    if not 0 <= end <= duration:
        raise ValueError(f"stop_at_ns must be in 0..{duration} (the scenario's duration), got {stop_at_ns}")
    world = build(scenario, core, max_segment_ns=max_segment_ns, end_ns=end)
    # The recorder reads every sample once the run is over, from what the vCPUs noted as they
    # ran: where the event loop stops (here, for the progress display) changes nothing.
    if progress is None:
        core.run(end)
    else:
        step = max(1, duration // 200)
        for t in [*range(step, end, step), end]:
            core.run(t)
            progress(t, duration)
    for s in world.scheds.values():
        s.finish()
    return collect(world, end)


__all__ = ["CATEGORIES", "ClockRow", "MigrationRow", "MigrationStatus", "RunResult", "TaskRow", "VcpuRow", "VmRow",
           "run"]
