"""The host: counter, CPUs with a fair scheduler (EEVDF or CFS) and its tick, tasks with schedstat
accounting, and the bodies tasks run."""

from pvtime.host.events import EventCore, EventLoop
from pvtime.host.host import Host
from pvtime.host.noise import CpuHog, PeriodicBurst, PeriodicTask
from pvtime.host.sched_config import CfsTunables, EevdfTunables, SchedConfig
from pvtime.host.scheduler import Scheduler, SchedObserver
from pvtime.host.task import Slice, Step, Task, TaskBody, TaskState

__all__ = ["CfsTunables", "CpuHog", "EevdfTunables", "EventCore", "EventLoop", "Host", "PeriodicBurst",
           "PeriodicTask", "SchedConfig", "SchedObserver", "Scheduler", "Slice", "Step", "Task", "TaskBody",
           "TaskState"]
