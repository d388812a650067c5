"""Result rows: what summary.json holds for each migration and each model guest's clock."""

from pvtime.sim.results import ClockRow, MigrationRow, MigrationStatus


def test_a_migration_not_reached_has_no_counters() -> None:
    row = MigrationRow("web", "host1", 700, MigrationStatus.NOT_REACHED)
    assert row.to_dict() == {"vm": "web", "to": "host1", "at_ms": 700, "status": "not reached"}


def test_a_migration_that_ran_has_its_counters_and_source() -> None:
    row = MigrationRow("web", "host1", 700, MigrationStatus.DONE, None, "host0", 1, (2, 1), 12_345, 1_004_000)
    assert row.to_dict() == {"vm": "web", "to": "host1", "at_ms": 700, "status": "done", "error": None,
                             "from": "host0", "rounds": 1, "pages": [2, 1], "bytes": 12_345,
                             "downtime_ns": 1_004_000}
    failed = MigrationRow("web", "host1", 700, MigrationStatus.ERROR, "refused", "host0", 1, (2,), 9, None)
    assert failed.to_dict()["status"] == "error" and failed.to_dict()["error"] == "refused"


def test_a_clock_row_summarises_its_samples() -> None:
    row = ClockRow("pv_lpt_counter", 1_000_000_000, 0, ((4_000_000, -3, 10), (8_000_000, 5, 30), (12_000_000, 1, 20)))
    assert row.to_dict() == {
        "clocksource": "pv_lpt_counter", "freq": 1_000_000_000, "ticks": 3,
        "error_first_ns": -3, "error_last_ns": 1, "error_min_ns": -3, "error_max_ns": 5,
        "timer_early": 0, "lateness_max_ns": 30, "lateness_mean_ns": 20,
        "samples": [[4_000_000, -3, 10], [8_000_000, 5, 30], [12_000_000, 1, 20]],
    }


def test_a_clock_row_without_ticks_has_no_statistics() -> None:
    d = ClockRow(None, None, 0, ()).to_dict()
    assert d["ticks"] == 0 and d["samples"] == []
    assert all(d[k] is None for k in ("error_first_ns", "error_last_ns", "error_min_ns", "error_max_ns",
                                      "lateness_max_ns", "lateness_mean_ns"))
