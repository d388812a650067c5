"""The host: counter, tasks with schedstat accounting, and the bodies tasks run."""

from pvtime.host.host import Host
from pvtime.host.noise import CpuHog
from pvtime.host.task import Slice, Step, Task, TaskBody, TaskState

__all__ = ["CpuHog", "Host", "Slice", "Step", "Task", "TaskBody", "TaskState"]
