"""A workload in pvtime's host scheduler, measured as the kernel side is.

The simulated host has the machine's CPU count (the scheduler's tunables scale with it, as
Linux's do) and the kernel's policy, HZ and preemption mode. The workload's tasks are pinned to
its first CPUs (0, or 0 and 1) and all start at time 0; the counters are read at `settle_ns` and
`settle_ns + window_ns`, as on the kernel side. A real periodic task's phase against the kernel's
tick grid is unknown, so the periodic tasks' first release is `phase_ns`: `phases` spreads them
over one tick period. This is the only module of `pvtime.calibrate` that imports the simulator.
"""

from __future__ import annotations

from pvtime.calibrate.kernel import KernelInfo
from pvtime.calibrate.schedstat import Schedstat, TaskWindow
from pvtime.calibrate.workloads import TaskKind, TaskSpec, Workload
from pvtime.host import CpuHog, EventLoop, Host, PeriodicTask, SchedConfig, Scheduler, TaskBody

PHASE_OFFSET_NS = 137_731  # odd, so that no release falls on a tick


def sched_config(kernel: KernelInfo) -> SchedConfig:
    """The simulator's configuration for `kernel` (ValueError for a value it does not model)."""
    return SchedConfig(policy=kernel.policy, hz=kernel.hz, preempt=kernel.preempt)  # type: ignore[arg-type]


def phases(kernel: KernelInfo, runs: int) -> list[int]:
    """`runs` first-release times spread over one tick period: k * tick / runs + an odd offset."""
    tick = sched_config(kernel).tick_ns
    return [(k * tick // runs + PHASE_OFFSET_NS) % tick for k in range(runs)]


def _body(task: TaskSpec, phase_ns: int) -> TaskBody:
    if task.kind is TaskKind.HOG:
        return CpuHog()
    return PeriodicTask(task.work_ns, task.period_ns, phase_ns)


def simulate(workload: Workload, kernel: KernelInfo, *, settle_ns: int, window_ns: int,
             phase_ns: int = PHASE_OFFSET_NS) -> tuple[TaskWindow, ...]:
    """Run `workload` once; each task's counters over [settle_ns, settle_ns + window_ns]."""
    if workload.ncpus > kernel.cpus:
        raise ValueError(f"workload {workload.name} needs {workload.ncpus} CPUs, the host has {kernel.cpus}")
    end = settle_ns + window_ns
    loop = EventLoop()
    host = Host(ncpus=kernel.cpus)
    sched = Scheduler(host, loop, sched_config(kernel), end_ns=end)
    cpus = list(range(workload.ncpus))
    tasks = []
    for spec in workload.tasks:
        task = host.spawn(spec.name)
        sched.add(task, _body(spec, phase_ns), nice=spec.nice, cpus=cpus, start_ns=0)
        tasks.append(task)
    loop.run(settle_ns)
    first = [Schedstat(*t.schedstat()) for t in tasks]
    loop.run(end)
    sched.finish()
    last = [Schedstat(*t.schedstat()) for t in tasks]
    return tuple(TaskWindow.between(s.name, a, b, window_ns) for s, a, b in zip(workload.tasks, first, last))
