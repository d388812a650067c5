"""The discrete-event core: callbacks ordered by virtual time (integer nanoseconds).

Events at the same time run by priority (lower first), then in the order they were posted, so a
run is a pure function of its inputs. SimPy orders its events by the same key (time, priority,
insertion), which lets bench/bench_sim.py drive the same scheduler with either core, check that
the results are identical, and compare them. Measured there: on whole scenarios the two are
within a few percent (the guests dominate: the core is a small share of the time); on bare
events this loop is faster. It was chosen because it is at least as fast, keeps times as plain
integers, and makes SimPy a bench/test extra rather than a runtime dependency.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, Protocol

# Priorities used by the host at one instant: wake-ups first, then what the CPUs' clocks do
# (ticks, segment ends), then each CPU's scheduling decision -- which so sees every task that
# became runnable and every tick of that instant -- followed by the execution of its task.
PRIO_WAKE = 1
PRIO_CPU = 2
PRIO_RESCHED = 3


class EventCore(Protocol):
    """What the host scheduler needs from a discrete-event engine."""

    @property
    def now(self) -> int:
        """The virtual time of the event being processed (ns)."""
        ...

    def at(self, time_ns: int, prio: int, fn: Callable[[], None], *, private: bool = False) -> None:
        """Call `fn` at `time_ns` (>= now). A `private` event is the poster's own business:
        `next_after` does not report it (a scheduler bounds its CPUs by its own events itself)."""
        ...

    def run(self, until_ns: int) -> None:
        """Process every event before `until_ns`; afterwards `now` is `until_ns`. Where a run
        stops is the caller's business, not the simulation's: nothing else depends on it."""
        ...

    def next_after(self, time_ns: int) -> int | None:
        """The earliest time later than `time_ns` (not before `now`) at which a pending event not
        posted as private happens (None: none is pending)."""
        ...


class EventLoop:
    """A binary-heap event loop: the default `EventCore`."""

    def __init__(self) -> None:
        self._now = 0
        self._seq = 0
        self._heap: list[tuple[int, int, int, Callable[[], None]]] = []
        self._public: list[tuple[int, int]] = []  # (time, seq) of the events not posted private
        self.processed = 0  # events run so far (for benchmarks and progress)

    @property
    def now(self) -> int:
        """Virtual time of the event being run (or where the last run() stopped)."""
        return self._now

    def at(self, time_ns: int, prio: int, fn: Callable[[], None], *, private: bool = False) -> None:
        """Run `fn` at `time_ns`; equal times run by `prio`, then in the order they were added."""
        if time_ns < self._now:
            raise ValueError(f"event at {time_ns} ns is in the past (now {self._now} ns)")
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, prio, self._seq, fn))
        if not private:
            heapq.heappush(self._public, (time_ns, self._seq))

    def run(self, until_ns: int) -> None:
        """Run every event before `until_ns`, in order; then stand at `until_ns`."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] < until_ns:
            time_ns, _, _, fn = pop(heap)
            self._now = time_ns
            fn()
            n += 1
        self.processed += n
        self._now = max(self._now, until_ns)

    def next_after(self, time_ns: int) -> int | None:
        """The earliest pending public event time later than `time_ns` (events at `time_ns`
        skipped); `time_ns` is not before `now`."""
        if time_ns < self._now:
            raise ValueError(f"next_after({time_ns} ns) asks about the past (now {self._now} ns)")
        public = self._public
        # What is at `now` or before never answers a question about `now` or later: dropping it
        # keeps this O(log n) when many events share an instant (a thousand tasks forked at 0).
        while public and public[0][0] <= self._now:
            heapq.heappop(public)
        if public and public[0][0] > time_ns:
            return public[0][0]
        return heap_next_after(public, time_ns)

    def pending(self) -> int:
        """Events not yet processed."""
        return len(self._heap)


def heap_next_after(heap: Sequence[tuple[Any, ...]], time_ns: int) -> int | None:
    """The smallest first field greater than `time_ns` in a binary heap of tuples.

    Only the nodes at `time_ns` itself (at the top, since nothing earlier is pending) are
    descended through, so the cost is the number of events pending at that instant.
    """
    best: int | None = None
    stack = [0] if heap else []
    n = len(heap)
    while stack:
        i = stack.pop()
        t = heap[i][0]
        if t > time_ns:
            if best is None or t < best:
                best = t
            continue
        for child in (2 * i + 1, 2 * i + 2):
            if child < n:
                stack.append(child)
    return best
