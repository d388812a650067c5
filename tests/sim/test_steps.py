"""A step function noted as a run goes and read afterwards (what each vCPU's probe keeps)."""

from pvtime.sim.steps import Steps


def test_a_value_holds_from_just_after_it_was_set() -> None:
    # Guest code executing from t is not part of a run stopped at t: a value set at t is seen
    # after t, not at t.
    s: Steps[int | None] = Steps(None)
    s.set(10, 1)
    s.set(20, 2)
    assert [s.at(t) for t in (0, 10, 11, 20, 21, 99)] == [None, None, 1, 1, 2, 2]


def test_an_unchanged_value_is_not_kept_and_the_last_of_an_instant_wins() -> None:
    s = Steps(0)
    for t in (1, 2, 3):
        s.set(t, 0)
    assert len(s) == 0
    s.set(5, 7)
    s.set(5, 8)
    s.set(6, 8)
    assert len(s) == 2 and s.at(5) == 0 and s.at(6) == 8 and s.at(7) == 8


def test_a_change_noted_out_of_time_order_lands_at_its_time() -> None:
    # vCPU 1's code ran ahead to 30 and changed the value; vCPU 0's code, simulated afterwards,
    # changed it at 12.
    s = Steps("a")
    s.set(30, "b")
    s.set(12, "c")
    assert [s.at(t) for t in (12, 13, 30, 31)] == ["a", "c", "c", "b"]
