"""The tables `pvtime run` prints, read as a new user reads them: units in the headers, every
figure explained, no unexplained zeros, nothing repeated on every row."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from pvtime.report import migration_table, summary_table
from pvtime.report.table import vcpu_ranges
from pvtime.sim import scenario
from pvtime.sim.runner import run

OVERCOMMIT = """\
name = "crowd"
duration_ms = 30

[[host]]
name = "h"
cpus = 2

[[vm]]
name = "big"
host = "h"
vcpus = 12
cpus = [0]
guest = { kind = "model", busy_us = [4000, 8000] }

[[vm]]
name = "old"
host = "h"
pvtime = false
cpus = [1]
guest = { kind = "model" }

[[noise]]
name = "hog"
host = "h"
cpus = [1]
"""

MIGRATED = """\
name = "moved"
duration_ms = 80

[[host]]
name = "a"
cpus = 1
counter_hz = 25_000_000

[[host]]
name = "b"
cpus = 1
counter_hz = 1_000_000_000

[[vm]]
name = "w"
host = "a"
lpt_pv_hz = 1_000_000_000
guest = { kind = "model" }

[[noise]]
name = "hog"
host = "a"

[[migration]]
vm = "w"
to = "b"
at_ms = 20

[[migration]]
vm = "w"
to = "a"
at_ms = 50
"""


def shown(table: Table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def rows(text: str) -> dict[str, list[str]]:
    """The table's body rows by their first cell."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells:
            out[cells[0]] = cells[1:]
    return out


def test_units_are_in_the_headers_and_every_column_is_explained() -> None:
    result = run(scenario.parse(OVERCOMMIT))
    text = shown(summary_table(result))
    for header in ("host run_delay ms", "guest clock ms", "/proc/stat ms", "steal %", "clock−host ms",
                   "stat−host ms"):
        assert header in text
    flat = " ".join(text.split())  # the caption wraps
    # the column is the kernel's counter (ns); /proc/stat shows it in whole ticks, which steal % uses
    assert "its counter in ns, shown in ms; /proc/stat prints it in whole USER_HZ ticks" in flat
    assert "steal %: the steal /proc/stat shows (whole ticks) over the vCPU's elapsed time since its first run" in flat
    longer = run(scenario.parse(OVERCOMMIT.replace("duration_ms = 30", "duration_ms = 200")))
    stolen = [r for r in longer.vcpus if r.proc_stat_steal]
    assert stolen
    for r in stolen:  # whole USER_HZ ticks (10 ms) of the kernel's counter, over the elapsed time
        assert r.proc_stat_steal == r.guest_steal_ns // 10_000_000
        assert r.steal_pct == 100.0 * r.proc_stat_steal * 10_000_000 / r.elapsed_ns
    old = next(r for r in result.vcpus if r.vm == "old")
    # without PV time the guest sees none of it: the whole truth is the difference, in ms like its neighbours
    assert old.proc_stat_minus_host_ns == -old.host_run_delay_ns != 0
    assert rows(text)["old/0"][-1] == f"{-old.host_run_delay_ns / 1e6:+.3f}"
    assert rows(text)["big/0"][-2] == "0"  # the record is exact


def test_vcpus_that_never_ran_are_explained() -> None:
    result = run(scenario.parse(OVERCOMMIT))
    idle = [r for r in result.vcpus if r.timeslices == 0]
    assert idle, "12 vCPUs busy 4-8 ms on one CPU for 30 ms: some never get it"
    text = shown(summary_table(result))
    flat = " ".join(text.split())  # the caption wraps
    assert f"{len(idle)} vCPUs never ran (no host CPU time before the end of the run" in flat
    assert vcpu_ranges(idle) in flat
    for r in idle:  # no unexplained zeros: nothing was measured
        assert rows(text)[f"{r.vm}/{r.vcpu}"][1:] == ["-"] * 6


def test_vcpu_ranges_read_as_people_write_them() -> None:
    result = run(scenario.parse(OVERCOMMIT))
    by_name = {f"{r.vm}/{r.vcpu}": r for r in result.vcpus}
    picked = [by_name[n] for n in ("big/3", "big/4", "big/5", "big/9", "old/0")]
    assert vcpu_ranges(picked) == "big/3..5, big/9, old/0"


def test_the_migration_table_does_not_repeat_whole_run_values() -> None:
    result = run(scenario.parse(MIGRATED))
    assert [m.status.value for m in result.migrations] == ["done", "done"]
    text = shown(migration_table(result))
    clock = result.clocks["w"]
    whole_run = f"{clock.error_min_ns}..{clock.error_max_ns} ns"
    assert text.count(whole_run) == 1  # once, under the table, not on each row
    assert "w's guest clock over the whole run" in " ".join(text.split())
    body = rows(text)
    assert body["w"][:2] == ["a>b", "25 MHz>1 GHz"] or body["w"][:2] == ["b>a", "1 GHz>25 MHz"]
    assert "(!)" not in text  # a VM with LPT crosses frequencies as it should


def test_the_console_width_given_or_not_the_table_prints_the_same() -> None:
    result = run(scenario.parse(OVERCOMMIT))
    for width in (200, 100, 60):  # wide enough for the columns' contents, and too narrow for them
        printed = []
        for given in (None, width):
            console = Console(width=width, record=True, file=io.StringIO())
            console.print(summary_table(result, given))
            printed.append(console.export_text())
        assert printed[0] == printed[1], width
    fitted = summary_table(result, 200)
    assert all(col.width is not None for col in fitted.columns)  # widths set: rich measures no cell
