"""/proc/<pid>/schedstat counters and what a measurement window makes of them.

The three fields (kernel/sched/stats.h, `sched_info_arrive`): the time a task ran
(sum_exec_runtime, ns), the time it waited runnable on a run queue (run_delay, ns), and the
number of times it was switched in (pcount: its timeslices). The kernel side and the simulated
side both take two samples, `window_ns` apart, and compare the rates below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvtime.abi.linux import NSEC_PER_SEC


@dataclass(frozen=True)
class Schedstat:
    """One sample of a task's counters."""

    run_ns: int
    run_delay_ns: int
    timeslices: int

    @classmethod
    def read(cls, pid: int, proc: Path = Path("/proc")) -> Schedstat:
        """/proc/<pid>/schedstat now (OSError when the task is gone or the file does not exist)."""
        run, delay, slices = (int(x) for x in (proc / str(pid) / "schedstat").read_text().split()[:3])
        return cls(run, delay, slices)


@dataclass(frozen=True)
class TaskWindow:
    """What one task's counters did over a measurement window."""

    task: str
    window_ns: int
    run_ns: int
    run_delay_ns: int
    timeslices: int

    @classmethod
    def between(cls, task: str, start: Schedstat, end: Schedstat, window_ns: int) -> TaskWindow:
        """The change from `start` to `end`, `window_ns` apart."""
        return cls(task, window_ns, end.run_ns - start.run_ns, end.run_delay_ns - start.run_delay_ns,
                   end.timeslices - start.timeslices)

    @property
    def run_delay_share(self) -> float:
        """The fraction of the window the task spent waiting runnable."""
        return self.run_delay_ns / self.window_ns

    @property
    def cpu_share(self) -> float:
        """The fraction of the window the task ran."""
        return self.run_ns / self.window_ns

    @property
    def timeslices_per_s(self) -> float:
        """How often it was switched in, per second."""
        return self.timeslices * NSEC_PER_SEC / self.window_ns

    @property
    def wait_per_timeslice_ns(self) -> float | None:
        """Its mean wait before each timeslice (None: it was never switched in)."""
        return self.run_delay_ns / self.timeslices if self.timeslices else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the counters' changes; the rates follow from them)."""
        return {"task": self.task, "window_ns": self.window_ns, "run_ns": self.run_ns,
                "run_delay_ns": self.run_delay_ns, "timeslices": self.timeslices}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskWindow:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        w = cls(str(d["task"]), int(d["window_ns"]), int(d["run_ns"]), int(d["run_delay_ns"]),
                int(d["timeslices"]))
        if w.window_ns <= 0:
            raise ValueError(f"task {w.task}: window_ns must be positive, got {w.window_ns}")
        return w
