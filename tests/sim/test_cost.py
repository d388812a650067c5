"""`pvtime run` estimates a run's wall-clock cost first, and asks for --yes above a minute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.sim import cost, scenario

# 4096 CPUs for 10 virtual minutes: occupancy.csv alone would have 245 million rows.
HUGE = """\
name = "huge"
duration_ms = 600_000

[[host]]
name = "h"
cpus = 4096

[[vm]]
name = "a"
host = "h"
vcpus = 1
guest = { kind = "model", busy_us = [1000, 2000] }
"""


def test_the_embedded_scenarios_need_no_confirmation() -> None:
    for name in scenario.embedded_names():
        assert cost.estimate_seconds(scenario.load(name).spec) < cost.CONFIRM_ABOVE_S, name


def test_a_4096_cpu_host_is_estimated_and_refused_without_yes(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(HUGE)
    out = tmp_path / "res"
    start = time.monotonic()
    res = CliRunner().invoke(main, ["run", str(path), "--no-progress", "--out", str(out)])
    assert time.monotonic() - start < 10
    assert res.exit_code == 125
    assert "huge: estimated 41.3 minutes of wall-clock time (4096 host CPUs, 600000 ms simulated)" in res.output
    assert "pass --yes to run it" in res.output
    assert not out.exists()


def test_yes_runs_a_run_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "CONFIRM_ABOVE_S", 0.0)
    args = ["run", "--duration", "20", "--no-progress", "--out", str(tmp_path / "res")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 125 and "pass --yes" in refused.output
    res = CliRunner().invoke(main, [*args, "--yes"])
    assert res.exit_code == 0, res.output
    assert "default: estimated" in res.output and (tmp_path / "res" / "summary.json").is_file()
