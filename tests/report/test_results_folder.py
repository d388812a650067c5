"""The results folder: every file written, identical bytes for the same seed, a valid trace."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.report import summary_table, write_results
from pvtime.sim import scenario
from pvtime.sim.runner import run

EXPECTED = {"series.csv", "series.parquet", "occupancy.csv", "occupancy.parquet", "steal.png",
            "occupancy.png", "trace.json", "summary.json", "console-mini.txt", ".pvtime-results"}


def short_default(seed: int = 1, duration_ms: int = 300) -> scenario.Scenario:
    sc = scenario.load("default")
    return scenario.Scenario(sc.spec.model_copy(update={"seed": seed, "duration_ms": duration_ms}), sc.source)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_results(run(short_default()), a)
    write_results(run(short_default()), b)
    write_results(run(short_default(seed=2)), c)
    assert {p.name for p in a.iterdir()} == EXPECTED
    for name in EXPECTED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "series.csv").read_bytes() != (c / "series.csv").read_bytes()


def test_files_agree_with_the_run(tmp_path: Path) -> None:
    result = run(short_default())
    write_results(result, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["scenario"] == "default" and len(summary["vcpus"]) == len(result.vcpus)
    for row in summary["vcpus"]:
        if row["pvtime"]:
            assert row["record_minus_host_ns"] == 0
    assert [(h["name"], h["sched"]) for h in summary["hosts"]] == [
        (h.name, {"policy": h.sched.policy, "hz": h.sched.hz, "preempt": h.sched.preempt}) for h in result.spec.host]
    assert summary["hosts"][0]["sched"] == {"policy": "eevdf", "hz": 250, "preempt": "voluntary"}
    with (tmp_path / "series.csv").open() as f:
        rows = list(csv.DictReader(f))
    table = pq.read_table(tmp_path / "series.parquet")
    assert table.num_rows == len(rows) == len(result.vcpus) * len(result.grid_ns)
    last = {(r["vm"], r["vcpu"]): int(r["host_run_delay_ns"]) for r in rows if int(r["time_ns"]) == result.duration_ns}
    for v in result.vcpus:
        assert last[(v.vm, str(v.vcpu))] == v.host_run_delay_ns
    occ = pq.read_table(tmp_path / "occupancy.parquet").to_pydict()
    assert all(x >= 0 for x in occ["idle_ns"])
    assert (tmp_path / "steal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_is_chrome_json(tmp_path: Path) -> None:
    write_results(run(short_default(duration_ms=100)), tmp_path)
    doc = json.loads((tmp_path / "trace.json").read_text())
    events = doc["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X", "i", "C"}
    for e in events:
        assert isinstance(e["pid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["tid"], int) and e["dur"] >= 0
    names = {e["name"] for e in events if e["ph"] == "i" and e["cat"] == "hypercall"}
    assert "PV_TIME_ST" in names


def test_trace_slices_on_a_track_never_overlap(tmp_path: Path) -> None:
    # Times are microseconds written exactly from integer ns: read as decimals (as Perfetto reads
    # them), each is a whole number of ns, and no slice begins before the previous one on its
    # track (a thread, or a CPU) ends; no slice is empty.
    write_results(run(short_default(duration_ms=200)), tmp_path)
    doc = json.loads((tmp_path / "trace.json").read_text(), parse_float=Decimal)
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "M":
            continue
        ts = Decimal(e["ts"]) * 1000
        assert ts == int(ts), e
        if e["ph"] == "X":
            dur = Decimal(e["dur"]) * 1000
            assert dur == int(dur) and dur > 0, e
            tracks[(e["pid"], e["tid"])].append((int(ts), int(ts + dur)))
    assert len(tracks) > 10
    for track, slices in tracks.items():
        slices.sort()
        overlaps = [(a, b) for a, b in zip(slices, slices[1:]) if b[0] < a[1]]
        assert not overlaps, (track, overlaps[:3])
    assert "displayTimeUnit" not in doc  # older Perfetto read "ms" there as the unit of ts


def test_summary_table_has_a_row_per_vcpu() -> None:
    result = run(short_default(duration_ms=100))
    table = summary_table(result)
    assert table.row_count == len(result.vcpus)
    # the caption says which scheduler and HZ each host ran
    assert "host0 eevdf, HZ=250, preempt=voluntary" in str(table.caption)


def test_cli_run_and_scenarios(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "res"
    res = runner.invoke(main, ["run", "--duration", "100", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "web/0" in res.output and {p.name for p in out.iterdir()} == EXPECTED | {"provenance.json"}
    res = runner.invoke(main, ["scenarios"])
    assert res.exit_code == 0 and "default" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration_ms = "long"\n[[host]]\nname = "h"\ncpus = 1\n')
    res = runner.invoke(main, ["run", str(bad), "--no-progress"])
    assert res.exit_code != 0 and f"{bad}:2: duration_ms: Input should be a valid integer" in res.output
