"""The host: counter, physical CPUs, tasks with schedstat accounting, and (later) a scheduler."""

from pvtime.host.task import Task, TaskState
from pvtime.host.host import Host, Slice

__all__ = ["Host", "Slice", "Task", "TaskState"]
