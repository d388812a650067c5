"""A recorded kernel measurement (Linux 6.18, EEVDF, HZ=250, preempt=none, 2 CPUs; made with
`pvtime calibrate --runs 3 --seconds 2 --json`) through the simulated side and the table. Nothing
here depends on the machine the tests run on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from pvtime.calibrate import SCHEMA, Recording, RecordingError, compare, load, render
from pvtime.calibrate.simulated import phases
from pvtime.cli import main

RECORDING = Path(__file__).parent / "data" / "linux-6.18-eevdf-hz250-2cpu.json"


@pytest.fixture(scope="module")
def recording() -> Recording:
    return load(RECORDING)


@pytest.fixture(scope="module")
def result(recording: Recording) -> dict:
    return compare(recording).to_dict()


def _rows(result: dict, workload: str) -> dict[str, dict]:
    return {r["task"]: r for r in result["rows"] if r["workload"] == workload}


def test_the_recording_is_what_the_simulator_is_configured_from(recording: Recording) -> None:
    k = recording.kernel
    assert (k.policy, k.hz, k.preempt, k.cpus) == ("eevdf", 250, "none", 2)
    assert recording.settings.runs == 3
    assert all(len(recording.runs_of(w.name)) == 3 for w in recording.workloads)


def test_every_task_gets_one_row_with_the_kernel_and_the_simulator_side_by_side(recording: Recording,
                                                                                 result: dict) -> None:
    assert result["schema"] == SCHEMA
    assert [(r["workload"], r["task"]) for r in result["rows"]] == [
        (w.name, t.name) for w in recording.workloads for t in w.tasks]
    for row in result["rows"]:
        share = row["run_delay_share"]
        assert set(share) == {"kernel", "simulated", "difference", "tolerance", "ok"}
        assert set(share["kernel"]) == {"median", "spread"}
        assert share["tolerance"] >= 0.02
        assert set(row["timeslices_per_s"]) == {"kernel", "simulated"}
        assert set(row["wait_per_timeslice_ns"]) == {"kernel", "simulated", "relative_difference", "ok"}
        assert row["verdict"] == "ok" or row["verdict"].startswith("miss: ")
        assert 0.0 <= share["simulated"]["median"] <= 1.0
    assert result["met"] == all(r["verdict"] == "ok" for r in result["rows"])
    assert set(result["disturbance"]) == {w.name for w in recording.workloads}


def test_the_simulated_side_is_deterministic(recording: Recording, result: dict) -> None:
    assert compare(recording).to_dict() == result


def test_three_hogs_on_one_cpu_each_wait_two_thirds_of_the_time(result: dict) -> None:
    """K equal hogs on one CPU: each waits (K - 1) / K of the time, under any fair policy."""
    for row in _rows(result, "3hogs").values():
        assert row["run_delay_share"]["simulated"]["median"] == pytest.approx(2 / 3, abs=0.01)


def test_a_nice_5_hog_beside_a_nice_0_hog_waits_its_weight_share(result: dict) -> None:
    """sched_prio_to_weight: nice 0 = 1024, nice 5 = 335, so the nice 5 hog waits 1024 / 1359."""
    rows = _rows(result, "nice0+nice5")
    assert rows["nice5"]["run_delay_share"]["simulated"]["median"] == pytest.approx(1024 / 1359, abs=0.01)
    assert rows["nice0"]["run_delay_share"]["simulated"]["median"] == pytest.approx(335 / 1359, abs=0.01)


def test_simulated_tasks_never_use_more_than_their_cpus(result: dict) -> None:
    """As in Linux, a wait is counted when it ends (sched_info_arrive) and a run when it is charged,
    so a wait or run begun before the window can add to it: allow 5 % at the edges."""
    for runs in result["simulator"]["runs"].values():
        for run in runs:
            for task in run:
                assert task["run_ns"] + task["run_delay_ns"] <= task["window_ns"] * 1.05
    for name, runs in result["simulator"]["runs"].items():
        ncpus = next(w["ncpus"] for w in result["workloads"] if w["name"] == name)
        for run in runs:
            assert sum(t["run_ns"] for t in run) <= ncpus * run[0]["window_ns"] * 1.05


def test_periodic_tasks_are_simulated_at_phases_spread_over_one_tick(recording: Recording, result: dict) -> None:
    ph = phases(recording.kernel, 3)
    assert result["simulator"]["phases_ns"] == ph
    assert len(set(ph)) == 3 and all(0 <= p < 4_000_000 for p in ph)


def test_the_json_written_reads_back_as_the_same_comparison(recording: Recording, result: dict) -> None:
    again = compare(Recording.from_dict(json.loads(json.dumps(result)))).to_dict()
    assert again == result


def test_the_table_names_the_kernel_its_disturbances_and_every_workload(recording: Recording) -> None:
    console = Console(record=True, width=220)
    console.print(render(compare(recording)))
    text = console.export_text()
    assert "Linux 6.18" in text and "HZ=250" in text and "preempt=none" in text
    assert "load average" in text and "steal" in text
    for w in recording.workloads:
        assert w.name in text
    assert "rows meet the target" in text


def test_cli_compares_a_recording_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(main, ["calibrate", "--from-json", str(RECORDING), "--workload", "3hogs",
                                    "--workload", "hog+2/10", "--preempt", "full", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [w["name"] for w in data["workloads"]] == ["3hogs", "hog+2/10"]
    assert data["kernel"]["preempt"] == "none"  # as recorded ...
    assert data["simulator"]["kernel"]["preempt"] == "full"  # ... and as simulated
    assert data["simulator"]["kernel"]["sources"]["preempt"] == "override"
    assert "preempt=full [override]" in res.output


@pytest.mark.parametrize("args, code, message", [
    (["--from-json", "/nonexistent/recording.json"], 125, "No such file"),
    (["--from-json", str(RECORDING), "--runs", "2"], 2, "fixed by the recording"),
    (["--from-json", str(RECORDING), "--workload", "nope"], 2, "not in the recording"),
    (["--workload", "nope"], 2, "unknown workload"),
    (["--hz", "99"], 2, "'99' is not one of"),
    (["--from-json", str(RECORDING), "--policy", "cfs", "--preempt", "lazy"], 125, "lazy"),
    (["--from-json", str(RECORDING), "--json", "/nonexistent/dir/out.json"], 2, "no such folder"),
])
def test_cli_says_what_is_wrong(args: list[str], code: int, message: str) -> None:
    res = CliRunner().invoke(main, ["calibrate", *args])
    assert res.exit_code == code, res.output
    assert message in res.output


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else/1"}))
    with pytest.raises(RecordingError, match="schema"):
        load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(RecordingError, match="not a calibration recording"):
        load(bad)
    data = json.loads(RECORDING.read_text())
    data["kernel_runs"][0]["tasks"].pop()
    bad.write_text(json.dumps(data))
    with pytest.raises(RecordingError, match="has tasks"):
        load(bad)


def test_workloads_needing_more_cpus_than_usable_are_skipped_and_said_so(recording: Recording) -> None:
    from dataclasses import replace

    from pvtime.calibrate.recording import skip_reasons
    from pvtime.calibrate.workloads import BUILTIN

    skipped = skip_reasons(BUILTIN, [0])
    assert set(skipped) == {w.name for w in BUILTIN if w.ncpus == 2}
    assert all("needs 2 CPUs" in why for why in skipped.values())
    one_cpu = replace(recording.select(tuple(w.name for w in recording.workloads if w.ncpus == 1)),
                      skipped=skipped)
    console = Console(record=True, width=220)
    console.print(render(compare(one_cpu)))
    text = console.export_text()
    assert all(f"skipped {name}: needs 2 CPUs" in text for name in skipped)


def test_the_wait_criterion_is_relative_only_above_a_floor() -> None:
    """25 % of a few nanoseconds of wake-up latency is no bound: waits within 0.05 ms agree."""
    from pvtime.calibrate.compare import Row, Stat

    def row(kernel_wait: float, sim_wait: float) -> Row:
        share = Stat(0.1, 0.0)
        return Row("w", "t", "t", share, share, Stat(100, 0), Stat(100, 0), Stat(kernel_wait, 0), Stat(sim_wait, 0))

    assert row(4.0, 0.0).wait_ok and row(40_000.0, 0.0).wait_ok  # a few ns, 40 us: equal
    assert not row(200_000.0, 100_000.0).wait_ok  # 0.2 ms against 0.1 ms: -50 %
    assert row(2_000_000.0, 2_400_000.0).wait_ok and not row(2_000_000.0, 2_600_000.0).wait_ok
