"""A value that changes at known virtual times: noted as a run goes, read at any time afterwards."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Generic, TypeVar

T = TypeVar("T")


class Steps(Generic[T]):
    """A step function of virtual time. `set(at, v)` notes that `v` holds from just after `at`;
    `at(t)` is the value noted last at a time before `t` (the initial value if none is).

    Strictly before: what guest code executing from `at` did is not part of a run stopped at
    `at` (the event loop runs the events before its end, so nothing starts at the end).
    """

    __slots__ = ("_times", "_values", "initial", "latest")

    def __init__(self, initial: T) -> None:
        self.initial = initial
        self.latest = initial  # the value as it is now (the last one set); read-only
        self._times: list[int] = []
        self._values: list[T] = []

    def set(self, at_ns: int, value: T) -> None:
        """The value is `value` from just after `at_ns`; unchanged from the last one set, nothing
        is noted."""
        if value == self.latest:
            return
        self.latest = value
        times = self._times
        if not times or at_ns >= times[-1]:
            times.append(at_ns)
            self._values.append(value)
            return
        # Out of time order: another vCPU's code, simulated ahead of this one, changed it at a
        # later time first. Rare: each value a probe notes is written by its own vCPU (a guest
        # could store into another vCPU's record); the console, which every vCPU writes, is
        # kept as chunks (`VmState.printed`).
        i = bisect_right(times, at_ns)
        times.insert(i, at_ns)
        self._values.insert(i, value)

    def at(self, t_ns: int) -> T:
        """The value at `t_ns`: the one noted last at a time before it."""
        i = bisect_left(self._times, t_ns)
        return self._values[i - 1] if i else self.initial

    def __len__(self) -> int:
        return len(self._times)
