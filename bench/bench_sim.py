"""Scenario simulation speed as vCPUs grow, with the own event loop and with SimPy.

Prints simulated vCPU-seconds per wall-second and events per second for 4, 64 and 1024 model
guest vCPUs (2 vCPUs per host CPU, VMs of 4 vCPUs, busy/idle guests, a hog per 8 CPUs), and the
ratio of the own loop against SimPy driving the very same scheduler. Both cores order events by
(time, priority, insertion), so the two runs must give identical results; the bench checks it.

Run: python bench/bench_sim.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_line  # noqa: E402

from pvtime.host import EventLoop  # noqa: E402
from pvtime.sim import scenario  # noqa: E402
from pvtime.sim.runner import run  # noqa: E402


class SimpyCore:
    """The host's EventCore on a simpy.Environment (same ordering: time, priority, insertion)."""

    def __init__(self) -> None:
        import simpy

        self.env = simpy.Environment()
        self._event = simpy.Event
        self.processed = 0

    @property
    def now(self) -> int:
        return int(self.env.now)

    def at(self, time_ns: int, prio: int, fn: Callable[[], None]) -> None:
        ev = self._event(self.env)
        ev._ok = True
        ev._value = None

        def fire(_ev: object) -> None:
            self.processed += 1
            fn()

        ev.callbacks.append(fire)
        self.env.schedule(ev, priority=prio, delay=time_ns - self.env.now)

    def run(self, until_ns: int) -> None:
        if until_ns > self.env.now:
            self.env.run(until=until_ns)


def workload(vcpus: int, duration_ms: int) -> scenario.Scenario:
    cpus = max(1, vcpus // 2)
    vms = "".join(f"""
[[vm]]
name = "vm{i}"
host = "h"
vcpus = {min(4, vcpus)}
memory_mib = 1
guest = {{ kind = "model", busy_us = [1000, 8000], idle_us = [0, 6000] }}
""" for i in range(max(1, vcpus // 4)))
    text = f"""
name = "bench{vcpus}"
duration_ms = {duration_ms}
seed = 7
sample_ms = {max(10, duration_ms // 20)}
trace = false
[[host]]
name = "h"
cpus = {cpus}
{vms}
[[noise]]
name = "hog"
host = "h"
count = {max(1, cpus // 8)}
"""
    return scenario.parse(text, f"bench{vcpus}")


def measure(sc: scenario.Scenario, core_factory: Callable[[], object]) -> tuple[float, int, object]:
    core = core_factory()
    start = time.perf_counter()
    result = run(sc, core=core)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    return wall, core.processed, result  # type: ignore[attr-defined]


def bare_events(core_factory: Callable[[], object], n: int = 200_000) -> float:
    """Events per second of the core alone: each event posts the next one (a chain of wake-ups)."""
    core = core_factory()
    left = [n]

    def tick() -> None:
        left[0] -= 1
        if left[0] > 0:
            core.at(core.now + 1000, 1, tick)  # type: ignore[attr-defined]

    for _ in range(64):  # 64 chains in flight, like CPUs
        core.at(0, 1, tick)  # type: ignore[attr-defined]
    start = time.perf_counter()
    core.run(1 << 62)  # type: ignore[attr-defined]
    return core.processed / (time.perf_counter() - start)  # type: ignore[attr-defined]


def main() -> None:
    quick = "--quick" in sys.argv
    print(machine_line())
    own, other = bare_events(EventLoop), bare_events(SimpyCore)
    print(f"bare event cores: own {own:,.0f} events/s, SimPy {other:,.0f} events/s, ratio {own / other:.2f}")
    cases = [(4, 2000), (64, 500), (1024, 50)] if not quick else [(4, 500), (64, 100), (1024, 10)]
    print(f"{'vCPUs':>6} {'virtual s':>9} {'core':>6} {'wall s':>8} {'vCPU-s/s':>9} {'events/s':>10} {'own/SimPy':>9}")
    for vcpus, duration_ms in cases:
        sc = workload(vcpus, duration_ms)
        own_wall, own_events, own = measure(sc, EventLoop)
        simpy_wall, simpy_events, other = measure(sc, SimpyCore)
        same = [r.host_run_delay_ns for r in own.vcpus] == [r.host_run_delay_ns for r in other.vcpus]  # type: ignore[attr-defined]
        if not same or own_events != simpy_events:
            raise SystemExit("the two cores disagree: the bench is not comparing like with like")
        vsec = vcpus * duration_ms / 1000
        for name, wall, events in (("own", own_wall, own_events), ("simpy", simpy_wall, simpy_events)):
            ratio = f"{simpy_wall / own_wall:9.2f}" if name == "own" else ""
            print(f"{vcpus:>6} {duration_ms / 1000:>9.3f} {name:>6} {wall:>8.2f} {vsec / wall:>9.2f} "
                  f"{events / wall:>10.0f} {ratio}")


if __name__ == "__main__":
    main()
