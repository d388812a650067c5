"""`pvtime compare RUN_A RUN_B`: per vCPU, each view of its steal in both runs with absolute and
relative differences; exit 1 beyond the tolerance; results folders of another schema, or folders
that are not results folders, refused with exit 125."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.cli.exits import EXIT_DIFFERENT, EXIT_OK, EXIT_TOOL_ERROR
from pvtime.report.compare import Results, ResultsError, Tolerance, compare, load_results
from pvtime.report.files import SCHEMA_VERSION

# Two VMs on one CPU, one without PV time (no record: null), for 60 ms.
SCENARIO = """
name = "cmp"
duration_ms = 60
seed = {seed}
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = {{ kind = "model", busy_us = [1000, 4000], idle_us = [0, 2000] }}
[[vm]]
name = "b"
host = "h"
pvtime = false
guest = {{ kind = "model", busy_us = [1000, 4000] }}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Results folders: seed 1 twice, and seed 2."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, seed in (("a", 1), ("a_again", 1), ("other_seed", 2)):
        toml = root / f"{name}.toml"
        toml.write_text(SCENARIO.format(seed=seed))
        res = CliRunner().invoke(main, ["run", str(toml), "--out", str(root / name), "--quiet"])
        assert res.exit_code == 0, res.output
        out[name] = root / name
    return out


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def test_the_same_run_twice_compares_equal(runs: dict[str, Path]) -> None:
    res = invoke(runs["a"], runs["a_again"], "--json")
    assert res.exit_code == EXIT_OK, res.output
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == EXIT_OK and doc["exceeding"] == 0 and doc["error"] is None
    assert [(v["vm"], v["vcpu"]) for v in doc["vcpus"]] == [("a", 0), ("a", 1), ("b", 0)]
    summary = json.loads((runs["a"] / "summary.json").read_text())
    for row, v in zip(summary["vcpus"], doc["vcpus"]):
        for view in ("host_run_delay_ns", "record_steal_ns", "guest_steal_ns"):
            assert v[view]["a"] == v[view]["b"] == row[view]
            assert v[view]["exceeds"] is False
    assert doc["vcpus"][2]["record_steal_ns"] == {"a": None, "b": None, "diff_ns": None, "relative": None,
                                                 "exceeds": False}  # no PV time in either run
    table = invoke(runs["a"], runs["a_again"])
    assert table.exit_code == EXIT_OK and "0 of 3 vCPUs beyond the tolerance" in table.output


def test_another_seed_differs_beyond_no_tolerance_and_within_a_wide_one(runs: dict[str, Path]) -> None:
    res = invoke(runs["a"], runs["other_seed"], "--json")
    assert res.exit_code == EXIT_DIFFERENT
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == EXIT_DIFFERENT and doc["exceeding"] > 0
    assert "the runs' seeds differ: 1 and 2" in doc["notes"]
    for v in doc["vcpus"]:
        d = v["host_run_delay_ns"]
        assert d["diff_ns"] == d["b"] - d["a"]
        if d["a"]:
            assert d["relative"] == pytest.approx((d["b"] - d["a"]) / d["a"])
    # every difference within 100 ms, or within 1000 % of A: no exit 1
    assert invoke(runs["a"], runs["other_seed"], "--tolerance-ns", "100e6").exit_code == EXIT_OK
    assert invoke(runs["a"], runs["other_seed"], "--tolerance", "10").exit_code == EXIT_OK
    table = invoke(runs["a"], runs["other_seed"])
    assert table.exit_code == EXIT_DIFFERENT and "beyond the tolerance" in table.output


def row(vm: str, vcpu: int, truth: int | None, record: int | None, guest: int | None) -> dict[str, Any]:
    return {"vm": vm, "vcpu": vcpu, "host_run_delay_ns": truth, "record_steal_ns": record, "guest_steal_ns": guest}


def results(rows: list[dict[str, Any]], version: int = SCHEMA_VERSION) -> Results:
    return Results(Path("x"), {"schema_version": version, "scenario": "s", "seed": 1, "duration_ns": 1, "vcpus": rows})


def test_a_difference_exceeds_only_beyond_both_tolerances_relative_to_a() -> None:
    a = results([row("v", 0, 1000, 1000, 0)])
    b = results([row("v", 0, 1100, 900, 40)])
    views = compare(a, b, Tolerance(relative=0.1, absolute_ns=30)).vcpus[0].views
    assert (views["host_run_delay_ns"].diff_ns, views["host_run_delay_ns"].relative) == (100, 0.1)
    assert not views["host_run_delay_ns"].exceeds  # exactly 10 % of A
    assert not views["record_steal_ns"].exceeds  # -10 %
    assert views["guest_steal_ns"].relative is None and views["guest_steal_ns"].exceeds  # 40 ns > 30 ns, A = 0
    assert not compare(a, b, Tolerance(0.1, 40)).vcpus[0].exceeds
    assert compare(a, b, Tolerance(0.09, 40)).vcpus[0].exceeds
    # the reference is A: 1000 -> 1100 is +10 %, 1100 -> 1000 is -9.09 %
    back = compare(b, a, Tolerance()).vcpus[0].views["host_run_delay_ns"]
    assert back.relative == pytest.approx(-100 / 1100)


def test_a_value_or_a_vcpu_in_one_run_only_always_exceeds() -> None:
    a = results([row("v", 0, 5, 5, None), row("v", 1, 5, None, None)])
    b = results([row("v", 0, 5, 5, 4), row("w", 0, 5, 5, 5)])
    c = compare(a, b, Tolerance(relative=100.0, absolute_ns=10**12))
    assert [(v.vm, v.vcpu, v.only_in, v.exceeds) for v in c.vcpus] == [
        ("v", 0, None, True), ("v", 1, "a", True), ("w", 0, "b", True)]
    assert c.vcpus[0].views["guest_steal_ns"].exceeds and not c.vcpus[0].views["record_steal_ns"].exceeds
    assert c.to_dict()["exceeding"] == 3


def test_results_of_different_schemas_are_refused() -> None:
    with pytest.raises(ResultsError, match="different schemas: .* schema 0, .* schema 1"):
        compare(results([], version=0), results([], version=1), Tolerance())


def test_a_newer_schema_or_none_is_refused_with_exit_125(runs: dict[str, Path], tmp_path: Path) -> None:
    for name, version, message in (("newer", SCHEMA_VERSION + 1, "newer than this pvtime reads"),
                                   ("unversioned", None, "no schema_version")):
        folder = tmp_path / name
        shutil.copytree(runs["a"], folder)
        summary = json.loads((folder / "summary.json").read_text())
        if version is None:
            del summary["schema_version"]
        else:
            summary["schema_version"] = version
        (folder / "summary.json").write_text(json.dumps(summary))
        res = invoke(runs["a"], folder, "--json")
        assert res.exit_code == EXIT_TOOL_ERROR
        assert message in json.loads(res.stdout.splitlines()[0])["error"]


def test_folders_that_are_not_results_folders_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / ".pvtime-results").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"what": "something else"}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{")
    for name, message in (("nosuch", "no such folder"), ("file", "not a folder"),
                          ("empty", "not a pvtime results folder (no summary.json)"),
                          ("half", "a results folder without summary.json"),
                          ("other", "not a pvtime summary"), ("broken", "not JSON")):
        with pytest.raises(ResultsError, match=re.escape(message)):
            load_results(tmp_path / name)
        res = invoke(tmp_path / name, runs["a"])
        assert res.exit_code == EXIT_TOOL_ERROR and message in res.output, (name, res.output)
        assert "Traceback" not in res.output


def test_the_runs_overrides_are_shown_and_a_difference_in_them_noted(runs: dict[str, Path], tmp_path: Path) -> None:
    """provenance.json records what `--set` changed: compare names it in each run's line and notes
    that the runs differ in it, since the scenario's name and seed alone would not say so."""
    toml = tmp_path / "a.toml"
    toml.write_text(SCENARIO.format(seed=1))
    out = tmp_path / "busier"
    res = CliRunner().invoke(main, ["run", str(toml), "--out", str(out), "--quiet", "--set", "vm.b.vcpus=2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(invoke(runs["a"], out, "--json").stdout)
    assert doc["a"]["overrides"] == {} and doc["b"]["overrides"] == {"vm.b.vcpus": 2}
    assert "the runs' overrides differ: none and vm.b.vcpus=2" in doc["notes"]
    text = " ".join(invoke(runs["a"], out).output.split())
    assert re.search(r"B: \S+busier \(cmp, seed 1, 60.000 ms, pvtime .*\), set vm\.b\.vcpus=2\)", text), text
    assert "overrides differ" not in invoke(runs["a"], runs["a_again"], "--json").stdout
