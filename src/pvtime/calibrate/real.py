"""A workload as real processes on the running kernel, measured with /proc/<pid>/schedstat.

Each task is a child process of the calibrating process (`child_task.py`), so all of them share
its session and so its autogroup (CONFIG_SCHED_AUTOGROUP): they compete with each other as the
simulated tasks do, and with other sessions' tasks only as one group. Each pins itself to the
workload's CPUs; for a one-CPU workload that is the CPU least busy just before the run (sampled
from /proc/stat for 0.1 s), recorded with the run. All tasks start at one CLOCK_MONOTONIC instant
(the periodic tasks' first release); after `settle_s` the counters are read, and again
`seconds` later. The children are killed however the run ends (and die with the calibrating
process, PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvtime.calibrate.kernel import CpuTimes, least_busy_cpus
from pvtime.calibrate.schedstat import Schedstat, TaskWindow
from pvtime.calibrate.workloads import TaskSpec, Workload

CHILD = Path(__file__).with_name("child_task.py")
READY_TIMEOUT_S = 10.0
START_DELAY_NS = 20_000_000  # from "all ready" to the common start


class RealRunError(Exception):
    """A real run could not be made (a child failed to start or died)."""


@dataclass(frozen=True)
class KernelRun:
    """One repetition of a workload on the kernel: its tasks' windows and what disturbed them.

    `steal_ns` is the steal /proc/stat shows on the workload's CPUs during the window (this
    machine's own hypervisor taking them); `other_cpu_ns` the CPU time those CPUs spent on anything
    but the workload's tasks (both at /proc/stat's 10 ms resolution).
    """

    workload: str
    repetition: int
    cpus: tuple[int, ...]
    tasks: tuple[TaskWindow, ...]
    steal_ns: int
    other_cpu_ns: int

    @property
    def window_ns(self) -> int:
        """The measured window (the same for all tasks)."""
        return self.tasks[0].window_ns

    @property
    def other_share(self) -> float:
        """`other_cpu_ns` as a share of the window's CPU time on the workload's CPUs."""
        return self.other_cpu_ns / (self.window_ns * len(self.cpus))

    @property
    def steal_share(self) -> float:
        """`steal_ns` as a share of the window's CPU time on the workload's CPUs."""
        return self.steal_ns / (self.window_ns * len(self.cpus))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"workload": self.workload, "repetition": self.repetition, "cpus": list(self.cpus),
                "steal_ns": self.steal_ns, "other_cpu_ns": self.other_cpu_ns,
                "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelRun:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        tasks = tuple(TaskWindow.from_dict(t) for t in d["tasks"])
        if not tasks:
            raise ValueError(f"a run of {d['workload']} has no tasks")
        return cls(str(d["workload"]), int(d["repetition"]), tuple(int(c) for c in d["cpus"]), tasks,
                   int(d.get("steal_ns", 0)), int(d.get("other_cpu_ns", 0)))


def unavailable_reason() -> str | None:
    """Why real runs cannot be made here (None: they can)."""
    if not hasattr(os, "sched_setaffinity"):
        return "os.sched_setaffinity is not available on this platform"
    if not Path(f"/proc/{os.getpid()}/schedstat").exists():
        return "/proc/<pid>/schedstat does not exist (a kernel without CONFIG_SCHED_INFO, or no /proc)"
    return None


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, and so its children."""
    return sorted(os.sched_getaffinity(0))


def _spawn(task: TaskSpec, cpus: tuple[int, ...]) -> subprocess.Popen[str]:
    args = [sys.executable, "-S", str(CHILD), str(os.getpid()), task.kind.value, str(task.work_ns),
            str(task.period_ns), str(task.nice), ",".join(map(str, cpus))]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)


def _failure(task: str, proc: subprocess.Popen[str]) -> RealRunError:
    proc.kill()
    _, err = proc.communicate(timeout=5)
    return RealRunError(f"task {task} (pid {proc.pid}) failed: {err.strip() or f'exit status {proc.returncode}'}")


@contextmanager
def _children(workload: Workload, cpus: tuple[int, ...]) -> Iterator[list[subprocess.Popen[str]]]:
    """The workload's processes, ready and pinned; killed and reaped on the way out."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for task in workload.tasks:
            procs.append(_spawn(task, cpus))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for task, proc in zip(workload.tasks, procs):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or proc.stdout.readline().strip() != "ready":
                raise _failure(task.name, proc)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _sample(pids: list[int]) -> tuple[int, list[Schedstat]]:
    before = time.monotonic_ns()
    stats = [Schedstat.read(pid) for pid in pids]
    return (before + time.monotonic_ns()) // 2, stats


def _sleep_until(monotonic_ns: int) -> None:
    left = monotonic_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


def run_once(workload: Workload, cpus: tuple[int, ...], *, repetition: int, seconds: float,
             settle_s: float) -> KernelRun:
    """Run `workload` on `cpus` once: start, settle, measure `seconds`, kill."""
    with _children(workload, cpus) as procs:
        start = time.monotonic_ns() + START_DELAY_NS
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start}\n")
            proc.stdin.flush()
        _sleep_until(start + int(settle_s * 1e9))
        pids = [p.pid for p in procs]
        cpu_before = CpuTimes.sample()
        t0, first = _sample(pids)
        _sleep_until(t0 + int(seconds * 1e9))
        t1, last = _sample(pids)
        cpu_after = CpuTimes.sample()
        for task, proc in zip(workload.tasks, procs):
            if proc.poll() is not None:
                raise _failure(task.name, proc)
    windows = tuple(TaskWindow.between(t.name, a, b, t1 - t0) for t, a, b in zip(workload.tasks, first, last))
    ours = sum(w.run_ns for w in windows)
    return KernelRun(workload.name, repetition, cpus, windows, cpu_after.steal_since(cpu_before, list(cpus)),
                     cpu_after.busy_since(cpu_before, list(cpus)) - ours)


def measure(workloads: tuple[Workload, ...], *, runs: int, seconds: float, settle_s: float,
            progress: Callable[[str], None] | None = None) -> list[KernelRun]:
    """Each workload `runs` times, interleaved: repetition 0 of every workload, then 1, ...

    Every workload must fit `usable_cpus()` (the caller skips those that do not).
    """
    allowed = usable_cpus()
    out: list[KernelRun] = []
    for rep in range(runs):
        for w in workloads:
            if progress is not None:
                progress(f"kernel: {w.name}, run {rep + 1}/{runs}")
            cpus = tuple(least_busy_cpus(w.ncpus, allowed))
            out.append(run_once(w, cpus, repetition=rep, seconds=seconds, settle_s=settle_s))
    return out

