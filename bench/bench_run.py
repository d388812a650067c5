"""`pvtime run` end to end, results and figures included: the default scenario and 1024 model vCPUs,
this tree against commit a787f9b.

Issue 14's goals: the default scenario in at most 2.5 s of wall time, and `pvtime run` at 1024
model vCPUs (bench_sim's workload: 512 host CPUs, VMs of 4 busy/idle vCPUs, a hog per 8 CPUs,
50 simulated ms) at least 10x faster than at a787f9b. Each figure is the median of `--runs` runs
(5 by default), the variants interleaved so that a change in the machine's load hits them alike;
the load average is printed before each case. Every run is a fresh interpreter (`PYTHONPATH` names
the tree; the baseline is checked out with `git worktree add` into a temporary directory, removed
afterwards) running the `pvtime` command's own entry point (`pvtime.cli.main`) with `run SCENARIO
--out DIR --no-progress`, its tables printed to a pipe; the wall time is taken around the whole
subprocess, interpreter start and exit included. a787f9b's scenario format has no `[host.sched]`
(its only scheduler) and its default scenario is its own: the ratio compares the command on the
same workload, not the scheduler alone.

The split of each run, measured inside it: imports (`pvtime.cli`, then `pvtime.sim.runner` and
`pvtime.report`, which every run needs), simulation (`pvtime.sim.runner.run`), writing the results
folder (`pvtime.report.write_results`, with any import it makes only then: matplotlib and pyarrow
in this tree), and the rest (scenario parsing, tables printed, provenance, interpreter start and
exit).

Run: python bench/bench_run.py [--runs N] [--baseline-runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_sim import workload_toml  # noqa: E402
from common import ROOT, baseline_worktree, describe_tree, loadavg, machine_line  # noqa: E402

BASELINE = "a787f9b"  # the commit issue 14 measured `pvtime run` at
DEFAULT_GOAL_S = 2.5  # issue 14: the default scenario, figures included, in at most 2.5 s
SPEEDUP_GOAL = 10.0  # issue 14: `pvtime run` at 1024 vCPUs at least 10x faster than the baseline
VCPUS = 1024
DURATION_MS = 50  # as bench_sim's 1024-vCPU point; the baseline's cost is mostly its figures anyway


# --- the measured side: runs in the subprocess, imports pvtime from PYTHONPATH -------------------

def worker(job: dict[str, Any]) -> None:
    """`pvtime run` in this process, its phases timed by wrapping the two functions every run calls."""
    t0 = time.perf_counter()
    import pvtime
    from pvtime.cli import main

    import pvtime.report
    import pvtime.sim.runner

    imports = time.perf_counter() - t0
    spent = {"simulation": 0.0, "writing": 0.0}

    def timed(phase: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start
        return wrapper

    pvtime.sim.runner.run = timed("simulation", pvtime.sim.runner.run)  # type: ignore[method-assign]
    pvtime.report.write_results = timed("writing", pvtime.report.write_results)  # type: ignore[attr-defined]
    try:
        main(["run", *job["args"]], prog_name="pvtime")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    print(json.dumps({"imports": imports, **spent, "inside": time.perf_counter() - t0, "pvtime": pvtime.__file__}))


# --- the driver: no pvtime import, one subprocess per measurement -------------------------------

def run_once(src: Path, args: list[str]) -> dict[str, Any]:
    """One `pvtime run` under `src`: its wall time (the whole subprocess) and its split."""
    import os

    out = Path(tempfile.mkdtemp(prefix="pvtime-bench-run-"))
    env = dict(os.environ, PYTHONPATH=str(src))
    job = {"args": [*args, "--out", str(out / "results"), "--no-progress"]}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"pvtime run {' '.join(args)} under {src} failed:\n{proc.stderr}")
    split: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(split["pvtime"]).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"pvtime run under {src} imported {split['pvtime']}")
    return {"wall": wall, **split}


Variants = dict[str, tuple[Path, list[str]]]


def measure(variants: Variants, runs: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """`runs[name]` runs of each variant, interleaved round by round."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(max(runs.values())):
        for name, (src, args) in variants.items():
            if r < runs[name]:
                samples[name].append(run_once(src, args))
    return samples


def report(case: str, samples: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """One line per variant: the median wall time, its range, the split (medians); the medians."""
    walls = {}
    for name, ss in samples.items():
        wall = statistics.median(s["wall"] for s in ss)
        walls[name] = wall
        med = {k: statistics.median(s[k] for s in ss) for k in ("imports", "simulation", "writing")}
        rest = wall - sum(med.values())
        print(f"{case:>9} {name:>9} {len(ss):>4} {wall:>7.2f} {min(s['wall'] for s in ss):>6.2f}"
              f"-{max(s['wall'] for s in ss):<6.2f} {med['imports']:>7.2f} {med['simulation']:>7.2f}"
              f" {med['writing']:>7.2f} {rest:>6.2f}")
    return walls


def measure_cases(src: Path, base: Path, runs: int, base_runs: int, *,
                  big: bool = True) -> tuple[dict[str, float], dict[str, float]]:
    """Both cases, this tree (`src`) against the baseline (`base`), each line printed: the median
    wall seconds of the default scenario and (with `big`; else {}) of the 1024-vCPU workload."""
    print(f"\n{'scenario':>9} {'tree':>9} {'runs':>4} {'wall s':>7} {'range':>13} {'imports':>7} "
          f"{'sim':>7} {'writing':>7} {'rest':>6}   (seconds; medians)")
    print(f"-- default, load average before: {loadavg()}", flush=True)
    default = report("default", measure({"new": (src, []), "baseline": (base, [])}, {"new": runs, "baseline": runs}))
    if not big:
        return default, {}
    with tempfile.TemporaryDirectory(prefix="pvtime-bench-run-") as tmp:
        new_toml, base_toml = Path(tmp) / "new.toml", Path(tmp) / "baseline.toml"
        new_toml.write_text(workload_toml(VCPUS, DURATION_MS, "eevdf"))
        base_toml.write_text(workload_toml(VCPUS, DURATION_MS, None))
        print(f"-- {VCPUS} vCPUs, {DURATION_MS} ms, load average before: {loadavg()}", flush=True)
        return default, report(f"{VCPUS}vcpu", measure({"new": (src, [str(new_toml), "--yes"]),
                                                        "baseline": (base, [str(base_toml)])},
                                                       {"new": runs, "baseline": base_runs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each variant (median)  [default: 5]")
    parser.add_argument("--baseline-runs", type=int, default=None,
                        help=f"runs of the baseline at {VCPUS} vCPUs, minutes each  [default: --runs]")
    parser.add_argument("--quick", action="store_true", help="1 run each, the default scenario only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    runs = 1 if args.quick else args.runs
    base_runs = runs if args.baseline_runs is None else args.baseline_runs
    src = ROOT / "src"
    print(machine_line())
    print(f"load average at start: {loadavg()}")
    print(f"goals (issue 14): the default scenario <= {DEFAULT_GOAL_S:g} s; {VCPUS} vCPUs >= {SPEEDUP_GOAL:g}x "
          f"faster than {BASELINE}")
    print(f"baseline: {BASELINE} (git worktree); new: {describe_tree()}; each run a subprocess of its own")
    with baseline_worktree(BASELINE, "run") as tree:
        default, big = measure_cases(src, tree / "src", runs, base_runs, big=not args.quick)
    verdicts = [f"default scenario: {default['new']:.2f} s, goal <= {DEFAULT_GOAL_S:g} s: "
                + ("met" if default["new"] <= DEFAULT_GOAL_S else
                   f"MISSED by {default['new'] - DEFAULT_GOAL_S:.2f} s ({default['new'] / DEFAULT_GOAL_S:.2f}x)")
                + f" (a787f9b's own default scenario: {default['baseline']:.2f} s)"]
    if big:
        speedup = big["baseline"] / big["new"]
        verdicts.append(f"{VCPUS} vCPUs: {big['new']:.2f} s against {big['baseline']:.2f} s, {speedup:.1f}x, "
                        f"goal >= {SPEEDUP_GOAL:g}x: " + ("met" if speedup >= SPEEDUP_GOAL else "MISSED"))
    print(f"\nload average at end: {loadavg()}")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
