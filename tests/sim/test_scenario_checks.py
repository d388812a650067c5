"""Scenario checks across fields: the format a file was written for, migrations after the end of
the run, and live migrations of a VM without LPT across counter frequencies (refused unless the
scenario allows them, then flagged in the results)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pvtime.report import migration_table, write_results
from pvtime.sim import scenario
from pvtime.sim.runner import run
from pvtime.sim.scenario_schema import SCENARIO_FORMAT

BASE = """\
name = "mig"
duration_ms = 60
{format}
[[host]]
name = "a"
cpus = 1
counter_hz = 25_000_000

[[host]]
name = "b"
cpus = 1
counter_hz = {b_hz}

[[vm]]
name = "v"
host = "a"
guest = {{ kind = "model" }}
{lpt}
[[migration]]
vm = "v"
to = "b"
at_ms = {at_ms}
{allow}
"""


def text(*, b_hz: int = 25_000_000, lpt: bool = False, at_ms: int = 20, allow: bool = False, fmt: str = "") -> str:
    return BASE.format(b_hz=b_hz, lpt="lpt_pv_hz = 1_000_000_000" if lpt else "", at_ms=at_ms,
                       allow="allow_frequency_change = true" if allow else "", format=fmt)


def line(toml: str, start: str) -> int:
    """The line of `toml` that starts with `start`."""
    return next(no for no, text in enumerate(toml.splitlines(), 1) if text.startswith(start))


def issues(toml: str) -> list[str]:
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.parse(toml, "mig.toml")
    return [str(i) for i in exc.value.issues]


def test_every_embedded_scenario_loads() -> None:
    for name in scenario.embedded_names():
        assert scenario.load(name).spec.name == name


def test_a_file_of_a_newer_format_is_refused_naming_the_line() -> None:
    assert scenario.parse(text(fmt=f"format = {SCENARIO_FORMAT}")).spec.format == SCENARIO_FORMAT
    # a newer file may hold keys this pvtime does not know: the format is the one error to report
    newer = text(fmt=f"format = {SCENARIO_FORMAT + 1}\nbrand_new_key = 1")
    assert issues(newer) == [
        f"mig.toml:{line(newer, 'format')}: format: written for scenario format {SCENARIO_FORMAT + 1}, newer than this pvtime reads "
        f"(format {SCENARIO_FORMAT} and older): upgrade pvtime"]
    assert issues(text(fmt="format = 0")) == ["mig.toml:3: format: Input should be greater than or equal to 1"]
    assert line(newer, "format") == 3


def test_a_migration_after_the_end_of_the_run_is_an_error() -> None:
    assert scenario.parse(text(at_ms=59)).spec.migration[0].at_ms == 59
    for at in (60, 500):
        toml = text(at_ms=at)
        assert issues(toml) == [
            f"mig.toml:{line(toml, 'at_ms')}: migration[0].at_ms: {at} ms is not before the end of the run (duration_ms = 60): "
            "the migration would never happen"]


def test_a_vm_without_lpt_is_not_migrated_across_frequencies_by_default() -> None:
    toml = text(b_hz=37_500_000)
    [issue] = issues(toml)
    assert issue.startswith(f"mig.toml:{line(toml, 'to =')}: migration[0].to: vm v has no Live Physical Time (lpt_pv_hz) and a counts "
                            "at 25,000,000 Hz, b at 37,500,000 Hz: after this live migration its clock would run "
                            "1.5x as fast as real time")
    assert "allow_frequency_change = true" in issue
    scenario.parse(text(b_hz=37_500_000, lpt=True))  # LPT keeps its clock: allowed
    scenario.parse(text())  # the same frequency: nothing to rescale
    scenario.parse(text(b_hz=37_500_000, allow=True))  # said explicitly


def test_the_route_follows_the_vm_from_host_to_host() -> None:
    toml = text() + '\n[[migration]]\nvm = "v"\nto = "c"\nat_ms = 40\n' + (
        '\n[[host]]\nname = "c"\ncpus = 1\ncounter_hz = 50_000_000\n')
    # the second migration leaves b (25 MHz) for c (50 MHz): refused as well
    assert any("b counts at 25,000,000 Hz, c at 50,000,000 Hz" in i for i in issues(toml))
    spec = scenario.parse(toml.replace('to = "c"\nat_ms = 40', 'to = "c"\nat_ms = 40\nallow_frequency_change = true'))
    routes = scenario.migration_routes(spec.spec)
    assert [(r.from_host, r.to_host, r.frequency_change_without_lpt) for r in routes] == [
        ("a", "b", False), ("b", "c", True)]


def test_an_allowed_frequency_change_is_flagged_in_the_results(tmp_path: Path) -> None:
    result = run(scenario.parse(text(b_hz=37_500_000, allow=True), "mig.toml"))
    write_results(result, tmp_path)
    [row] = json.loads((tmp_path / "summary.json").read_text())["migrations"]
    assert row["status"] == "done"
    assert row["counter_hz"] == [25_000_000, 37_500_000] and row["frequency_change_without_lpt"] is True
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(migration_table(result))
    shown = console.export_text()
    assert "│ 25 MHz>37.5 MHz (!) │" in shown
    assert "(!) v at 20 ms: a VM without LPT moved to another counter frequency" in shown
    # and its clock does run at the wrong rate: 1.5x over the 40 ms after the move
    assert result.clocks["v"].error_max_ns > 15_000_000


def test_values_that_would_crash_a_run_are_refused_when_the_file_is_read() -> None:
    # found by the sweep work: a 1 Hz counter made the model guest's tick interval 0 (a
    # ZeroDivisionError mid-run), and a VMM thread's burst longer than its period failed at run time
    base = """name = "v"
duration_ms = 50
[[host]]
name = "h"
cpus = 1
counter_hz = {hz}
[[vm]]
name = "v"
host = "h"
guest = {{ kind = "model" }}
vmm_thread = {{ period_us = 100, burst_us = {burst} }}
"""
    (err,) = issues(base.format(hz=1, burst=10))
    assert err.startswith("mig.toml:6: host[0].counter_hz") and "1000000" in err
    (err,) = issues(base.format(hz=25_000_000, burst=200))
    assert "vm[0].vmm_thread" in err and "burst_us (200) exceeds period_us (100)" in err
