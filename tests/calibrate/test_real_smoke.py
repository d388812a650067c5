"""A short real run of one workload on this machine's kernel: only the output's shape is checked
(the numbers depend on the machine and its load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvtime.calibrate import real
from pvtime.cli import main

reason = real.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"no real runs here: {reason}")


def test_three_hogs_on_the_running_kernel(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(main, ["calibrate", "--workload", "3hogs", "--runs", "1", "--seconds", "0.3",
                                    "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["settings"] == {"runs": 1, "seconds": 0.3, "settle_s": 0.2}
    [run] = data["kernel_runs"]
    assert run["workload"] == "3hogs" and len(run["cpus"]) == 1
    assert [t["task"] for t in run["tasks"]] == ["hog0", "hog1", "hog2"]
    for t in run["tasks"]:
        assert t["window_ns"] > 0 and t["run_ns"] >= 0 and t["run_delay_ns"] >= 0 and t["timeslices"] >= 0
    assert [r["task"] for r in data["rows"]] == ["hog0", "hog1", "hog2"]
    assert len(data["machine"]["loadavg_before"]) == 3
    assert "3hogs" in res.output and "rows meet the target" in res.output


def test_no_child_outlives_the_run() -> None:
    from pvtime.calibrate.workloads import BUILTIN

    w = BUILTIN[0]
    run = real.run_once(w, (real.usable_cpus()[0],), repetition=0, seconds=0.05, settle_s=0.0)
    assert [t.task for t in run.tasks] == [t.name for t in w.tasks]
    children = Path(f"/proc/self/task/{__import__('os').getpid()}/children")
    if children.exists():
        assert children.read_text().split() == []
