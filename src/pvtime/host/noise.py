"""Noise tasks: host threads that compete with vCPUs for physical CPUs."""

from __future__ import annotations

from pvtime.host.task import Slice, Step, TaskState


class CpuHog:
    """A CPU hog with a duty cycle: busy for `duty` of each `period_ns`, asleep for the rest.

    duty = 1.0 is a pure spinner that always wants the CPU.
    """

    def __init__(self, duty: float = 1.0, period_ns: int = 10_000_000, phase_ns: int = 0) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        if period_ns <= 0:
            raise ValueError(f"period_ns must be positive, got {period_ns}")
        self.duty = duty
        self.period_ns = period_ns
        self.phase_ns = phase_ns

    def step(self, slice_: Slice) -> Step:
        """Burn CPU until the slice ends or this period's busy part is over."""
        if self.duty >= 1.0:
            slice_.advance(slice_.remaining_ns)
            return Step(TaskState.QUEUED)
        busy = int(self.period_ns * self.duty)
        pos = (slice_.now_ns - self.phase_ns) % self.period_ns
        if pos >= busy:
            return Step(TaskState.SLEEPING, slice_.now_ns + self.period_ns - pos)
        slice_.advance(min(busy - pos, slice_.remaining_ns))
        pos = (slice_.now_ns - self.phase_ns) % self.period_ns
        if pos >= busy:
            return Step(TaskState.SLEEPING, slice_.now_ns + self.period_ns - pos)
        return Step(TaskState.QUEUED)
