"""Scenario simulation speed as vCPUs grow: both host scheduler policies against the previous one.

For 4, 64 and 1024 model guest vCPUs (2 vCPUs per host CPU, VMs of 4 vCPUs, busy/idle guests, a
hog per 8 CPUs) it prints simulated vCPU-seconds per wall-second of

- the baseline: commit a787f9b, the scheduler before the tick and EEVDF (CFS with no tick, its
  segments run ahead up to 50 ms), checked out with `git worktree add` into a temporary directory
  (removed afterwards) and run with `PYTHONPATH=<worktree>/src`;
- this tree with `[host.sched] policy = "eevdf"` and with `policy = "cfs"`;

each the median of 3 runs (interleaved, so a change in the machine's load hits all three alike),
and the ratios new/baseline against issue 8's requirement: the tick must not make the simulation
more than 2x slower per simulated second. Every measurement is a subprocess of its own, so imports
and memory do not mix; the machine's load average is printed before each point. The baseline tree
also predates the guest-side changes (NO_HZ_IDLE, ...): the ratio is this tree against that one,
not the scheduler alone. 1024 vCPUs simulate 50 ms, to keep the bench to a few minutes.

It also drives this tree's scheduler with SimPy instead of the own event loop (same ordering:
time, priority, insertion), checks that both give identical results, and compares their speed,
on whole scenarios and on bare events.

Run: python bench/bench_sim.py [--quick]    (--quick: 1 run per point, 4 and 64 vCPUs, shorter)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import heapq
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from common import ROOT, baseline_worktree, describe_tree, loadavg, machine_line  # noqa: E402

BASELINE = "a787f9b"  # the last commit before the tick and EEVDF (issue 8)
POLICIES = ("eevdf", "cfs")
MAX_SLOWDOWN = 2.0  # issue 8: the tick must not make the simulation more than 2x slower
FULL_CASES = [(4, 5000), (64, 500), (1024, 50)]  # (vCPUs, simulated ms): a few minutes in all
QUICK_CASES = [(4, 500), (64, 100)]


# --- the measured side: runs in a subprocess, imports pvtime from PYTHONPATH -----------------

class SimpyCore:
    """The host's EventCore on a simpy.Environment (same ordering: time, priority, insertion).

    `next_after` reports the public events (kept in a heap of their own, as the own loop does).
    """

    def __init__(self) -> None:
        import simpy

        from pvtime.host.events import heap_next_after

        self.env = simpy.Environment()
        self._event = simpy.Event
        self._next_after = heap_next_after
        self._public: list[tuple[int, int]] = []
        self._seq = 0
        self.processed = 0

    @property
    def now(self) -> int:
        return int(self.env.now)

    def at(self, time_ns: int, prio: int, fn: Callable[[], None], *, private: bool = False) -> None:
        ev = self._event(self.env)
        # a triggered event at a chosen priority: SimPy's own Timeout does the same internally
        ev._ok = True  # noqa: SLF001
        ev._value = None  # noqa: SLF001

        def fire(_ev: object) -> None:
            self.processed += 1
            fn()

        ev.callbacks.append(fire)
        self.env.schedule(ev, priority=prio, delay=time_ns - self.env.now)
        if not private:
            self._seq += 1
            heapq.heappush(self._public, (time_ns, self._seq))

    def run(self, until_ns: int) -> None:
        if until_ns > self.env.now:
            self.env.run(until=until_ns)

    def next_after(self, time_ns: int) -> int | None:
        while self._public and self._public[0][0] < self.now:
            heapq.heappop(self._public)
        return self._next_after(self._public, time_ns)


def _core(name: str) -> Any:
    if name == "simpy":
        return SimpyCore()
    from pvtime.host import EventLoop

    return EventLoop()


def workload_toml(vcpus: int, duration_ms: int, policy: str | None) -> str:
    """The bench scenario; `policy` None leaves out `[host.sched]` (the baseline has no policy)."""
    cpus = max(1, vcpus // 2)
    sched = "" if policy is None else f'[host.sched]\npolicy = "{policy}"\n'
    vms = "".join(f"""
[[vm]]
name = "vm{i}"
host = "h"
vcpus = {min(4, vcpus)}
memory_mib = 1
guest = {{ kind = "model", busy_us = [1000, 8000], idle_us = [0, 6000] }}
""" for i in range(max(1, vcpus // 4)))
    return f"""
name = "bench{vcpus}"
duration_ms = {duration_ms}
seed = 7
sample_ms = {max(10, duration_ms // 20)}
trace = false
[[host]]
name = "h"
cpus = {cpus}
{sched}{vms}
[[noise]]
name = "hog"
host = "h"
count = {max(1, cpus // 8)}
"""


def measure_scenario(vcpus: int, duration_ms: int, policy: str | None, core_name: str) -> dict[str, Any]:
    """Wall time of one run (scenario parsing and imports excluded), its events and results."""
    import pvtime
    from pvtime.sim import scenario
    from pvtime.sim.runner import run

    sc = scenario.parse(workload_toml(vcpus, duration_ms, policy), f"bench{vcpus}")
    core = _core(core_name)
    start = time.perf_counter()
    result = run(sc, core=core)
    wall = time.perf_counter() - start
    delays = [r.host_run_delay_ns for r in result.vcpus]
    return {"wall": wall, "events": core.processed, "pvtime": pvtime.__file__,
            "run_delay_ns": sum(delays), "digest": hashlib.sha256(repr(delays).encode()).hexdigest()[:16]}


def measure_bare(core_name: str, n: int = 200_000) -> dict[str, Any]:
    """Events per second of the core alone: each event posts the next one (a chain of wake-ups)."""
    core = _core(core_name)
    left = [n]

    def tick() -> None:
        left[0] -= 1
        if left[0] > 0:
            core.at(core.now + 1000, 1, tick)

    for _ in range(64):  # 64 chains in flight, like CPUs
        core.at(0, 1, tick)
    start = time.perf_counter()
    core.run(1 << 62)
    return {"rate": core.processed / (time.perf_counter() - start)}


def worker(job: dict[str, Any]) -> None:
    if job["kind"] == "bare":
        out = measure_bare(job["core"])
    else:
        out = measure_scenario(job["vcpus"], job["duration_ms"], job["policy"], job["core"])
    print(json.dumps(out))


# --- the driver: no pvtime import, one subprocess per measurement ---------------------------

def spawn(src: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement of this script in a fresh interpreter with `src` first on its path."""
    return common.spawn(__file__, src, job)


Samples = dict[str, list[dict[str, Any]]]


def measure_point(variants: dict[str, tuple[Path, str | None]], vcpus: int, duration_ms: int,
                  runs: int) -> Samples:
    """`runs` rounds of every variant (tree, policy), interleaved; repeated runs must agree."""
    samples: Samples = {name: [] for name in variants}
    for _ in range(runs):
        for name, (src, policy) in variants.items():
            job = {"kind": "sim", "vcpus": vcpus, "duration_ms": duration_ms, "policy": policy, "core": "own"}
            samples[name].append(spawn(src, job))
    for name, ss in samples.items():
        if len({(s["digest"], s["events"]) for s in ss}) != 1:
            raise SystemExit(f"{name}: repeated runs of {vcpus} vCPUs give different results")
    return samples


def report_point(samples: Samples, vcpus: int, duration_ms: int) -> list[bool]:
    """One line per variant; for each policy, whether it meets the requirement."""
    vsec = vcpus * duration_ms / 1000
    wall = {name: statistics.median(s["wall"] for s in ss) for name, ss in samples.items()}
    verdicts = []
    for name, ss in samples.items():
        events = ss[0]["events"]
        line = (f"{vcpus:>5} {duration_ms / 1000:>6.3f} {name:>9} {wall[name]:>7.2f} {vsec / wall[name]:>9.2f} "
                f"{events:>9} {events / wall[name]:>9.0f}")
        if name != "baseline":
            ratio = wall["baseline"] / wall[name]
            verdicts.append(ratio >= 1 / MAX_SLOWDOWN)
            line += f" {ratio:>8.2f}  {'holds' if verdicts[-1] else 'FAILS'}"
        print(line)
    return verdicts


def compare_simpy(src: Path, samples: Samples, vcpus: int, duration_ms: int) -> None:
    """Each policy once more on SimPy: the results must be identical to the own loop's."""
    vsec = vcpus * duration_ms / 1000
    for policy in POLICIES:
        own = samples[policy]
        other = spawn(src, {"kind": "sim", "vcpus": vcpus, "duration_ms": duration_ms, "policy": policy,
                            "core": "simpy"})
        if (other["digest"], other["events"]) != (own[0]["digest"], own[0]["events"]):
            raise SystemExit(f"{policy}: the own loop and SimPy disagree: the bench would not compare like "
                             "with like")
        speedup = other["wall"] / statistics.median(s["wall"] for s in own)
        print(f"{vcpus:>5} {duration_ms / 1000:>6.3f} {policy:>9} on SimPy (1 run): {other['wall']:.2f} s, "
              f"{vsec / other['wall']:.2f} vCPU-s/s, identical results; own loop {speedup:.2f}x as fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run per point, 4 and 64 vCPUs, shorter")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    runs = 1 if args.quick else 3
    src = ROOT / "src"
    print(machine_line())
    print(f"load average at start: {loadavg()}")
    print(f"requirement (issue 8): the tick must not make the simulation more than {MAX_SLOWDOWN:g}x slower "
          f"per simulated second, i.e. new/baseline >= {1 / MAX_SLOWDOWN:g}")
    print(f"baseline: {BASELINE} (git worktree); new: {describe_tree()}; "
          f"median of {runs} run{'s' if runs > 1 else ''} per figure, each in its own subprocess")
    bare = {c: spawn(src, {"kind": "bare", "core": c})["rate"] for c in ("own", "simpy")}
    print(f"bare event cores (new tree): own {bare['own']:,.0f} events/s, SimPy {bare['simpy']:,.0f} events/s, "
          f"ratio {bare['own'] / bare['simpy']:.2f}")

    verdicts: list[bool] = []
    with baseline_worktree(BASELINE) as tree:
        variants: dict[str, tuple[Path, str | None]] = {"baseline": (tree / "src", None)}
        variants.update({p: (src, p) for p in POLICIES})
        print(f"\n{'vCPUs':>5} {'sim s':>6} {'scheduler':>9} {'wall s':>7} {'vCPU-s/s':>9} {'events':>9} "
              f"{'events/s':>9} {'new/base':>8}  at most {MAX_SLOWDOWN:g}x slower?")
        for vcpus, duration_ms in QUICK_CASES if args.quick else FULL_CASES:
            print(f"-- {vcpus} vCPUs, load average before: {loadavg()}")
            samples = measure_point(variants, vcpus, duration_ms, runs)
            verdicts += report_point(samples, vcpus, duration_ms)
            compare_simpy(src, samples, vcpus, duration_ms)
    print(f"\nload average at end: {loadavg()}")
    failed = verdicts.count(False)
    print(f"requirement (the tick at most {MAX_SLOWDOWN:g}x slower per simulated second): "
          + ("holds at every point" if not failed else f"FAILS at {failed} of {len(verdicts)} points"))


if __name__ == "__main__":
    main()
