"""The workloads `pvtime calibrate` runs, on the kernel and in the simulator alike.

A workload is a few tasks, all free to use the same CPUs (one or two). A task is a CPU hog (it
never sleeps) or a periodic task: released every `period_ns` on an absolute CLOCK_MONOTONIC grid,
it works `work_ns` of its own CPU time, then sleeps until the next release not yet passed (missed
releases are skipped, not replayed). This is `pvtime.host.PeriodicTask`, and the loop each real
child process runs (`pvtime.calibrate.child_task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MS = 1_000_000


class TaskKind(StrEnum):
    """What a task does with the CPU."""

    HOG = "hog"
    PERIODIC = "periodic"


@dataclass(frozen=True)
class TaskSpec:
    """One task of a workload: a hog, or `work_ns` of CPU time every `period_ns`; its nice level."""

    name: str
    kind: TaskKind
    nice: int = 0
    work_ns: int = 0
    period_ns: int = 0

    def __post_init__(self) -> None:
        if not -20 <= self.nice <= 19:
            raise ValueError(f"task {self.name}: nice must be in -20..19, got {self.nice}")
        if self.kind is TaskKind.PERIODIC and not 0 < self.work_ns <= self.period_ns:
            raise ValueError(f"task {self.name}: need 0 < work_ns <= period_ns, got {self.work_ns}, {self.period_ns}")

    def describe(self) -> str:
        """``hog``, ``hog nice 5`` or ``2 ms / 10 ms``."""
        what = "hog" if self.kind is TaskKind.HOG else f"{self.work_ns / MS:g} ms / {self.period_ns / MS:g} ms"
        return what if self.nice == 0 else f"{what} nice {self.nice}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "nice": self.nice}
        if self.kind is TaskKind.PERIODIC:
            d |= {"work_ns": self.work_ns, "period_ns": self.period_ns}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        return cls(str(d["name"]), TaskKind(d["kind"]), int(d.get("nice", 0)), int(d.get("work_ns", 0)),
                   int(d.get("period_ns", 0)))


@dataclass(frozen=True)
class Workload:
    """Tasks that share `ncpus` CPUs: every task may run on any of them (and on no other)."""

    name: str
    description: str
    ncpus: int
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        if self.ncpus < 1:
            raise ValueError(f"workload {self.name}: ncpus must be >= 1, got {self.ncpus}")
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"workload {self.name}: needs tasks with distinct names, got {names}")

    @property
    def has_periodic(self) -> bool:
        """Whether a task's phase against the tick can matter."""
        return any(t.kind is TaskKind.PERIODIC for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"name": self.name, "description": self.description, "ncpus": self.ncpus,
                "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        return cls(str(d["name"]), str(d.get("description", "")), int(d["ncpus"]),
                   tuple(TaskSpec.from_dict(t) for t in d["tasks"]))


def _hogs(n: int, nice: int = 0, prefix: str = "hog") -> list[TaskSpec]:
    return [TaskSpec(f"{prefix}{i}", TaskKind.HOG, nice) for i in range(n)]


def _periodic(name: str, work_ms: float, period_ms: float, nice: int = 0) -> TaskSpec:
    return TaskSpec(name, TaskKind.PERIODIC, nice, int(work_ms * MS), int(period_ms * MS))


BUILTIN: tuple[Workload, ...] = (
    Workload("3hogs", "3 CPU hogs on one CPU", 1, tuple(_hogs(3))),
    Workload("hog+2/10", "a hog and 2 ms of work every 10 ms, one CPU", 1,
             (*_hogs(1), _periodic("per", 2, 10))),
    Workload("2hogs+1/7", "2 hogs and 1 ms every 7 ms, one CPU", 1, (*_hogs(2), _periodic("per", 1, 7))),
    Workload("nice0+nice5", "a nice 0 and a nice 5 hog, one CPU", 1,
             (TaskSpec("nice0", TaskKind.HOG, 0), TaskSpec("nice5", TaskKind.HOG, 5))),
    Workload("hog+0.5/4", "a hog and 0.5 ms every 4 ms, one CPU", 1, (*_hogs(1), _periodic("per", 0.5, 4))),
    Workload("2hogs+5/20", "2 hogs and 5 ms every 20 ms, one CPU", 1, (*_hogs(2), _periodic("per", 5, 20))),
    Workload("hog+2/10-nice5", "a hog and a nice 5 task of 2 ms every 10 ms, one CPU", 1,
             (*_hogs(1), _periodic("per", 2, 10, nice=5))),
    Workload("3hogs@2", "3 hogs free to use 2 CPUs", 2, tuple(_hogs(3))),
    Workload("2hogs+2x3/10@2", "2 hogs and two tasks of 3 ms every 10 ms, all free on 2 CPUs", 2,
             (*_hogs(2), _periodic("per0", 3, 10), _periodic("per1", 3, 10))),
)


def by_name(names: list[str] | tuple[str, ...], available: tuple[Workload, ...] = BUILTIN) -> tuple[Workload, ...]:
    """The workloads called `names` (all of `available` when empty), in `available`'s order."""
    known = {w.name: w for w in available}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(w for w in available if not names or w.name in names)
