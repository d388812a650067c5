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
