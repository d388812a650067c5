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


class PeriodicBurst:
    """A periodic job: released every `period_ns` (from `phase_ns`), needs `burst_ns` of CPU each
    time, and sleeps once the work is done. Unlike `CpuHog`, the burst is CPU time, so a burst
    that is kept waiting finishes late rather than shorter (a backup job, a VMM I/O thread).
    """

    def __init__(self, burst_ns: int, period_ns: int, phase_ns: int = 0) -> None:
        _check_periodic("burst_ns", burst_ns, period_ns, phase_ns)
        self.burst_ns = burst_ns
        self.period_ns = period_ns
        self._next_release = phase_ns
        self._left = 0

    def step(self, slice_: Slice) -> Step:
        """Work off the released bursts until the slice ends or nothing is left."""
        while slice_.now_ns >= self._next_release:
            self._left += self.burst_ns
            self._next_release += self.period_ns
        if self._left > 0:
            use = min(self._left, slice_.remaining_ns)
            slice_.advance(use)
            self._left -= use
        if self._left > 0:
            return Step(TaskState.QUEUED)
        return Step(TaskState.SLEEPING, self._next_release)


class PeriodicTask:
    """A periodic real-time-style loop, as a program on a real host writes it: released at
    `phase_ns + k * period_ns`, it works `work_ns` of its own CPU time (CLOCK_THREAD_CPUTIME_ID),
    then sleeps until the next release (an absolute CLOCK_MONOTONIC deadline). Releases that
    passed while it worked or waited are skipped, not replayed (unlike `PeriodicBurst`).
    `pvtime calibrate` runs exactly this loop as real processes.
    """

    # Its work loop reads CLOCK_THREAD_CPUTIME_ID, a system call that charges the running task
    # (update_curr): the scheduler notices the end of its slice at once, not at the next tick.
    polls_cpu_clock = True

    def __init__(self, work_ns: int, period_ns: int, phase_ns: int = 0) -> None:
        _check_periodic("work_ns", work_ns, period_ns, phase_ns)
        self.work_ns = work_ns
        self.period_ns = period_ns
        self._release = phase_ns
        self._left = work_ns
        self.missed = 0  # releases skipped because the previous work ended after them

    def step(self, slice_: Slice) -> Step:
        """Work off this release's CPU time; then sleep until the next release not yet passed."""
        if slice_.now_ns < self._release:
            return Step(TaskState.SLEEPING, self._release)
        use = min(self._left, slice_.remaining_ns)
        slice_.advance(use)
        self._left -= use
        if self._left > 0:
            return Step(TaskState.QUEUED)
        now = slice_.now_ns
        nxt = self._release + self.period_ns
        if nxt <= now:
            skipped = (now - nxt) // self.period_ns + 1
            self.missed += skipped
            nxt += skipped * self.period_ns
        self._release, self._left = nxt, self.work_ns
        return Step(TaskState.SLEEPING, nxt)


def _check_periodic(name: str, amount_ns: int, period_ns: int, phase_ns: int) -> None:
    """A periodic body's CPU time per period fits in the period; the phase is not negative."""
    if period_ns <= 0:
        raise ValueError(f"period_ns must be positive, got {period_ns}")
    if not 0 < amount_ns <= period_ns:
        raise ValueError(f"{name} must be in 1..period_ns ({period_ns}), got {amount_ns}")
    if phase_ns < 0:
        raise ValueError(f"phase_ns must be >= 0, got {phase_ns}")
