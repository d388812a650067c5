"""Run a scenario: build its world (`sim.build`), advance virtual time to its end, and collect
the results (`sim.collect`)."""

from __future__ import annotations

from collections.abc import Callable

from pvtime.host import EventCore, EventLoop
from pvtime.sim.build import build
from pvtime.sim.collect import collect
from pvtime.sim.recorder import CATEGORIES
from pvtime.sim.results import ClockRow, MigrationRow, MigrationStatus, RunResult, TaskRow, VcpuRow, VmRow
from pvtime.sim.scenario import Scenario

MS = 1_000_000

Progress = Callable[[int, int], None]


def run(scenario: Scenario, progress: Progress | None = None, *, core: EventCore | None = None,
        max_segment_ns: int | None = None) -> RunResult:
    """Run `scenario` to its end; `progress(now_ns, duration_ns)` is called as virtual time advances.

    `core` replaces the default event loop (bench/bench_sim.py drives the same run with SimPy);
    `max_segment_ns` splits the execution of task bodies (an internal limit: results do not change).
    """
    if core is None:
        core = EventLoop()
    world = build(scenario, core, max_segment_ns=max_segment_ns)
    duration = world.duration_ns
    chunk = max(scenario.spec.sample_ms * MS, duration // 200)
    t = 0
    while t < duration:
        t = min(duration, t + chunk)
        core.run(t)
        if progress is not None:
            progress(t, duration)
    for s in world.scheds.values():
        s.finish()
    return collect(world)


__all__ = ["CATEGORIES", "ClockRow", "MigrationRow", "MigrationStatus", "RunResult", "TaskRow", "VcpuRow", "VmRow",
           "run"]
