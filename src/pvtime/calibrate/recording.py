"""A kernel measurement as `pvtime calibrate` records it, and its JSON form.

The recording holds everything the simulated side and the table need: the kernel (as read, or
overridden), the settings, the workloads as they were run, each real run's counters, and what
disturbed the measurement. `pvtime calibrate --from-json` reads it back (the JSON the command
writes carries the comparison too; only the recording part is read), so a host measured elsewhere
can be compared later.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvtime.calibrate import kernel as kernel_mod
from pvtime.calibrate import real
from pvtime.calibrate.kernel import CpuTimes, KernelInfo
from pvtime.calibrate.real import KernelRun
from pvtime.calibrate.workloads import Workload

SCHEMA = "pvtime-calibrate/1"


class RecordingError(Exception):
    """A recording that cannot be read: missing, not JSON, another schema, or malformed."""


@dataclass(frozen=True)
class Settings:
    """How the measurement was made: repetitions, window and settling time."""

    runs: int
    seconds: float
    settle_s: float = 0.2

    def __post_init__(self) -> None:
        if self.runs < 1 or self.seconds <= 0 or self.settle_s < 0:
            raise ValueError(f"need runs >= 1, seconds > 0, settle_s >= 0; got {self}")

    @property
    def window_ns(self) -> int:
        """The nominal window (a real run's measured window differs by microseconds)."""
        return round(self.seconds * 1e9)

    @property
    def settle_ns(self) -> int:
        """The settling time before the window."""
        return round(self.settle_s * 1e9)


@dataclass(frozen=True)
class Machine:
    """What else was going on: load averages before and after, the machine's own steal.

    `steal_ns` is the steal of the whole machine (the cpu line of /proc/stat) from the first real
    run's start to the last one's end, `elapsed_ns` long; the per-window figures are in each run.
    """

    loadavg_before: tuple[float, ...]
    loadavg_after: tuple[float, ...]
    steal_ns: int
    elapsed_ns: int
    autogroup: str | None
    recorded_at: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"loadavg_before": list(self.loadavg_before), "loadavg_after": list(self.loadavg_after),
                "steal_ns": self.steal_ns, "elapsed_ns": self.elapsed_ns, "autogroup": self.autogroup,
                "recorded_at": self.recorded_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Machine:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        return cls(tuple(float(x) for x in d.get("loadavg_before", ())),
                   tuple(float(x) for x in d.get("loadavg_after", ())), int(d.get("steal_ns", 0)),
                   int(d.get("elapsed_ns", 0)), d.get("autogroup"), str(d.get("recorded_at", "")))


@dataclass(frozen=True)
class Recording:
    """The kernel side of a calibration."""

    kernel: KernelInfo
    settings: Settings
    machine: Machine
    workloads: tuple[Workload, ...]
    skipped: dict[str, str]  # workload name -> why it was not run
    runs: tuple[KernelRun, ...]

    def runs_of(self, workload: str) -> list[KernelRun]:
        """The runs of one workload, in repetition order."""
        return sorted((r for r in self.runs if r.workload == workload), key=lambda r: r.repetition)

    def select(self, names: tuple[str, ...]) -> Recording:
        """Only the workloads called `names` (all when empty); KeyError for an unknown name."""
        known = {w.name for w in self.workloads} | set(self.skipped)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"workload(s) {', '.join(unknown)} not in the recording; it has {', '.join(sorted(known))}")
        keep = set(names) if names else known
        return Recording(self.kernel, self.settings, self.machine,
                         tuple(w for w in self.workloads if w.name in keep),
                         {k: v for k, v in self.skipped.items() if k in keep},
                         tuple(r for r in self.runs if r.workload in keep))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without the schema key: `pvtime.calibrate.compare` adds it)."""
        return {"kernel": self.kernel.to_dict(),
                "settings": {"runs": self.settings.runs, "seconds": self.settings.seconds,
                             "settle_s": self.settings.settle_s},
                "machine": self.machine.to_dict(), "workloads": [w.to_dict() for w in self.workloads],
                "skipped": dict(self.skipped), "kernel_runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recording:
        """Read the JSON form (RecordingError when malformed)."""
        if d.get("schema") != SCHEMA:
            raise RecordingError(f"schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        try:
            s = d["settings"]
            rec = cls(KernelInfo.from_dict(d["kernel"]),
                      Settings(int(s["runs"]), float(s["seconds"]), float(s.get("settle_s", 0.2))),
                      Machine.from_dict(d.get("machine", {})),
                      tuple(Workload.from_dict(w) for w in d["workloads"]),
                      {str(k): str(v) for k, v in d.get("skipped", {}).items()},
                      tuple(KernelRun.from_dict(r) for r in d["kernel_runs"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise RecordingError(f"malformed recording: {type(exc).__name__}: {exc}") from None
        for w in rec.workloads:
            names = [t.name for t in w.tasks]
            for r in rec.runs_of(w.name):
                if [t.task for t in r.tasks] != names:
                    raise RecordingError(f"run {r.repetition} of {w.name} has tasks {[t.task for t in r.tasks]}, "
                                         f"the workload {names}")
        return rec


def load(path: Path) -> Recording:
    """Read a recording (the JSON `pvtime calibrate --json` writes)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordingError(f"{path}: not a calibration recording (a JSON {type(data).__name__})")
    try:
        return Recording.from_dict(data)
    except RecordingError as exc:
        raise RecordingError(f"{path}: {exc}") from None


def skip_reasons(workloads: tuple[Workload, ...], usable: list[int]) -> dict[str, str]:
    """The workloads that cannot run on the `usable` CPUs, and why."""
    return {w.name: f"needs {w.ncpus} CPUs, this process may use {len(usable)} ({', '.join(map(str, usable))})"
            for w in workloads if w.ncpus > len(usable)}


def record(workloads: tuple[Workload, ...], kernel: KernelInfo, settings: Settings,
           progress: Callable[[str], None] | None = None) -> Recording:
    """Measure `workloads` on the running kernel (skipping those that need more CPUs than usable)."""
    reason = real.unavailable_reason()
    if reason is not None:
        raise real.RealRunError(reason)
    skipped = skip_reasons(workloads, real.usable_cpus())
    runnable = tuple(w for w in workloads if w.name not in skipped)
    before_load = kernel_mod.loadavg()
    before = CpuTimes.sample()
    t0 = time.monotonic_ns()
    runs = real.measure(runnable, runs=settings.runs, seconds=settings.seconds, settle_s=settings.settle_s,
                        progress=progress)
    elapsed = time.monotonic_ns() - t0
    after = CpuTimes.sample()
    machine = Machine(tuple(before_load), tuple(kernel_mod.loadavg()), after.steal_since(before), elapsed,
                      kernel_mod.autogroup(),
                      datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    return Recording(kernel, settings, machine, runnable, skipped, tuple(runs))
