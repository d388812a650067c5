"""The host: counter, CPUs with a fair scheduler, tasks with schedstat accounting, and the bodies tasks run."""

from pvtime.host.events import EventCore, EventLoop
from pvtime.host.fair import SchedTunables
from pvtime.host.host import Host
from pvtime.host.noise import CpuHog, PeriodicBurst
from pvtime.host.scheduler import Scheduler, SchedObserver
from pvtime.host.task import Slice, Step, Task, TaskBody, TaskState

__all__ = ["CpuHog", "EventCore", "EventLoop", "Host", "PeriodicBurst", "SchedObserver", "SchedTunables",
           "Scheduler", "Slice", "Step", "Task", "TaskBody", "TaskState"]
