"""The simulated side of a recording, and the comparison row by row against the target.

Per workload and task: the kernel's median over its runs and its spread (range: max - min), the
simulator's median over runs with the periodic tasks' phase spread over one tick period
(`pvtime.calibrate.simulated.phases`), and a verdict. The target: the run_delay share within
max(0.02, 2 x the kernel's spread) of the kernel's median, and the mean wait per timeslice within
25 % of the kernel's -- or within 0.05 ms of it: below that a relative figure compares the
kernel's wake-up latency (microseconds) with nothing, and means nothing. A workload one of whose kernel runs other work disturbed (it took more than
5 % of the window's CPU time on the workload's CPUs) is marked noisy: its spread, and so its share
tolerance, may be the disturbance's rather than the kernel's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pvtime.calibrate import simulated
from pvtime.calibrate.kernel import KernelInfo
from pvtime.calibrate.real import KernelRun
from pvtime.calibrate.recording import SCHEMA, Recording
from pvtime.calibrate.schedstat import TaskWindow

SHARE_FLOOR = 0.02
SPREAD_FACTOR = 2.0
WAIT_TOLERANCE = 0.25
WAIT_FLOOR_NS = 50_000  # waits this close count as equal, whatever their ratio
NOISY_OTHER_SHARE = 0.05  # other work took more than this of a window's CPU time: a disturbed run


@dataclass(frozen=True)
class Stat:
    """A median over runs and its spread (max - min); None where no run had a value."""

    median: float | None
    spread: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        """The median and range of the values that exist."""
        have = [v for v in values if v is not None]
        if not have:
            return cls(None, None)
        return cls(statistics.median(have), max(have) - min(have))

    def to_dict(self) -> dict[str, float | None]:
        """The JSON form."""
        return {"median": self.median, "spread": self.spread}


@dataclass(frozen=True)
class Row:
    """One task of one workload, kernel beside simulator."""

    workload: str
    task: str
    describe: str
    kernel_share: Stat
    sim_share: Stat
    kernel_slices_per_s: Stat
    sim_slices_per_s: Stat
    kernel_wait_ns: Stat
    sim_wait_ns: Stat
    noisy: bool = False  # a kernel run of this workload was disturbed (`NOISY_OTHER_SHARE`)

    @property
    def share_diff(self) -> float:
        """Simulated minus kernel run_delay share (medians)."""
        assert self.sim_share.median is not None and self.kernel_share.median is not None
        return self.sim_share.median - self.kernel_share.median

    @property
    def share_tolerance(self) -> float:
        """max(0.02, 2 x the kernel's spread)."""
        return max(SHARE_FLOOR, SPREAD_FACTOR * (self.kernel_share.spread or 0.0))

    @property
    def wait_rel_diff(self) -> float | None:
        """(simulated - kernel) / kernel mean wait per timeslice; None when the kernel's is 0 or none."""
        k, s = self.kernel_wait_ns.median, self.sim_wait_ns.median
        if k is None or s is None or k == 0:
            return None
        return (s - k) / k

    @property
    def share_ok(self) -> bool:
        """The run_delay share is within its tolerance."""
        return abs(self.share_diff) <= self.share_tolerance

    @property
    def wait_ok(self) -> bool:
        """The wait per timeslice is within 25 %, or within 0.05 ms (both never switched in: equal)."""
        k, sim = self.kernel_wait_ns.median, self.sim_wait_ns.median
        if k is not None and sim is not None and abs(sim - k) <= WAIT_FLOOR_NS:
            return True
        rel = self.wait_rel_diff
        if rel is None:
            return k == sim
        return abs(rel) <= WAIT_TOLERANCE

    @property
    def verdict(self) -> str:
        """``ok``, or ``miss: share``, ``miss: wait``, ``miss: share, wait``."""
        misses = [name for name, ok in (("share", self.share_ok), ("wait", self.wait_ok)) if not ok]
        return "ok" if not misses else "miss: " + ", ".join(misses)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"workload": self.workload, "task": self.task, "describe": self.describe,
                "run_delay_share": {"kernel": self.kernel_share.to_dict(), "simulated": self.sim_share.to_dict(),
                                    "difference": self.share_diff, "tolerance": self.share_tolerance,
                                    "ok": self.share_ok},
                "timeslices_per_s": {"kernel": self.kernel_slices_per_s.to_dict(),
                                     "simulated": self.sim_slices_per_s.to_dict()},
                "wait_per_timeslice_ns": {"kernel": self.kernel_wait_ns.to_dict(),
                                          "simulated": self.sim_wait_ns.to_dict(),
                                          "relative_difference": self.wait_rel_diff, "ok": self.wait_ok},
                "verdict": self.verdict, "noisy": self.noisy}


@dataclass(frozen=True)
class Calibration:
    """A recording, the simulated runs of its workloads, and the rows comparing them."""

    recording: Recording
    kernel: KernelInfo  # the recording's, with any overrides: what the simulator ran
    phases_ns: tuple[int, ...]
    simulated: dict[str, tuple[tuple[TaskWindow, ...], ...]]  # workload -> one run per phase
    rows: tuple[Row, ...]

    @property
    def met(self) -> bool:
        """Every row meets the target."""
        return all(r.verdict == "ok" for r in self.rows)

    def disturbance(self, workload: str) -> tuple[float, float]:
        """The largest share of a window's CPU time that other work, and steal, took on `workload`'s
        CPUs over its kernel runs (at /proc/stat's 10 ms resolution)."""
        runs = self.recording.runs_of(workload)
        return max(r.other_share for r in runs), max(r.steal_share for r in runs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the recording (readable by `--from-json`), the simulated runs, the rows."""
        rec = self.recording
        return {"schema": SCHEMA} | rec.to_dict() | {
            "simulator": {"kernel": self.kernel.to_dict(), "phases_ns": list(self.phases_ns),
                          "runs": {name: [[t.to_dict() for t in run] for run in runs]
                                   for name, runs in self.simulated.items()}},
            "target": {"share_floor": SHARE_FLOOR, "spread_factor": SPREAD_FACTOR,
                       "wait_tolerance": WAIT_TOLERANCE, "wait_floor_ns": WAIT_FLOOR_NS,
                       "spread": "range (max - min) over runs"},
            "disturbance": {w: dict(zip(("other_cpu_share_max", "steal_share_max"), self.disturbance(w)))
                            for w in self.simulated},
            "rows": [r.to_dict() for r in self.rows], "met": self.met}


def _rows(name: str, describe: dict[str, str], kernel_runs: Sequence[KernelRun],
          sim_runs: Sequence[Sequence[TaskWindow]]) -> list[Row]:
    def stat(windows: Sequence[TaskWindow], metric: Callable[[TaskWindow], float | None]) -> Stat:
        return Stat.of([metric(w) for w in windows])

    rows = []
    for i, task in enumerate(describe):
        k = [run.tasks[i] for run in kernel_runs]
        s = [run[i] for run in sim_runs]
        metrics: list[Callable[[TaskWindow], float | None]] = [
            lambda w: w.run_delay_share, lambda w: w.timeslices_per_s, lambda w: w.wait_per_timeslice_ns]
        ks, ss, kt, st, kw, sw = (stat(side, m) for m in metrics for side in (k, s))
        noisy = any(r.other_share > NOISY_OTHER_SHARE for r in kernel_runs)
        rows.append(Row(name, task, describe[task], ks, ss, kt, st, kw, sw, noisy))
    return rows


def compare(recording: Recording, overrides: dict[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> Calibration:
    """Simulate each recorded workload once per recorded run (phases spread over a tick); compare.

    `overrides` (release, policy, hz, preempt, cpus; None: keep) change the kernel the simulator
    models.
    ValueError when the simulator does not model the resulting kernel.
    """
    kernel = recording.kernel.overridden(overrides or {})
    simulated.sched_config(kernel)
    runs = recording.settings.runs
    phases = simulated.phases(kernel, runs)
    sims: dict[str, tuple[tuple[TaskWindow, ...], ...]] = {}
    rows: list[Row] = []
    for w in recording.workloads:
        kernel_runs = recording.runs_of(w.name)
        if not kernel_runs:
            continue
        if progress is not None:
            progress(f"simulator: {w.name}")
        # Without periodic tasks the phase changes nothing, and the simulation is deterministic.
        use = phases if w.has_periodic else phases[:1]
        one = [simulated.simulate(w, kernel, settle_ns=recording.settings.settle_ns,
                                  window_ns=recording.settings.window_ns, phase_ns=p) for p in use]
        sims[w.name] = tuple(one if w.has_periodic else one * runs)
        rows += _rows(w.name, {t.name: t.describe() for t in w.tasks}, kernel_runs, sims[w.name])
    return Calibration(recording, kernel, tuple(phases), sims, tuple(rows))
