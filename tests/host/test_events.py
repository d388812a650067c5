"""The event loop orders by (time, priority, posting order)."""

from pvtime.host import EventLoop
from pvtime.host.events import PRIO_CPU, PRIO_WAKE

import pytest


def test_order_and_until() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(10, PRIO_CPU, lambda: seen.append("cpu@10"))
    loop.at(10, PRIO_WAKE, lambda: seen.append("wake@10"))
    loop.at(5, PRIO_CPU, lambda: seen.append("a@5"))
    loop.at(5, PRIO_CPU, lambda: seen.append("b@5"))
    loop.at(20, PRIO_WAKE, lambda: seen.append("late"))
    loop.run(20)
    assert seen == ["a@5", "b@5", "wake@10", "cpu@10"]
    assert loop.now == 20 and loop.pending() == 1
    with pytest.raises(ValueError, match="past"):
        loop.at(19, PRIO_CPU, lambda: None)


def test_the_end_of_a_run_is_no_event() -> None:
    # A scheduler bounds its segments by next_after: where a caller stops the loop must not be
    # a bound (it would be a decision point that depends on how the run is observed).
    loop = EventLoop()
    seen: list[int | None] = []
    loop.at(2, PRIO_CPU, lambda: seen.append(loop.next_after(2)))
    loop.at(7, PRIO_CPU, lambda: None, private=True)  # a CPU's own business: not reported
    loop.at(10, PRIO_WAKE, lambda: None)
    loop.run(5)
    assert seen == [10]
    assert loop.next_after(5) == 10
    loop.run(11)
    assert loop.next_after(11) is None
