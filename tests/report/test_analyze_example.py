"""examples/analyze.py, the pandas example, run as a reader would run it on a fresh results
folder: its per-VM steal agrees with summary.json, and its rate table shows the noisy
neighbour's on and off phases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvtime.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analyze.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The neighbour's hogs spin on the victim's CPUs for 0-300 ms and sleep for 300-600 ms.
    out = tmp_path_factory.mktemp("nn") / "results"
    res = CliRunner().invoke(main, ["run", "noisy-neighbour", "--duration", "600", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def analyze(*args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warnings
    return done.stdout


def table(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the table printed under `heading` (after its two header lines), by their first cell."""
    block = text.split(heading, 1)[1].strip("\n").split("\n\n")[0].splitlines()
    return {cells[0]: cells[1:] for cells in (line.split() for line in block[3:])}


def test_the_example_reads_a_fresh_results_folder(results: Path, tmp_path: Path) -> None:
    png = tmp_path / "rates.png"
    out = analyze(str(results), "--plot", str(png))
    summary = json.loads((results / "summary.json").read_text())
    assert out.startswith("noisy-neighbour (seed 1, 600 ms), 4 vCPUs")
    per_vm = table(out, "steal per VM by the end")
    for vm in ("victim", "control"):
        truth = [v["host_wait_ns"] for v in summary["vcpus"] if v["vm"] == vm]
        assert float(per_vm[vm][1]) == pytest.approx(sum(truth) / len(truth) / 1e6, abs=5e-4)
        assert per_vm[vm][3] == "0.000"  # the record is exact
    rates = table(out, "steal rate per VM")
    victim = {int(w): float(r[0]) for w, r in rates.items()}
    control = {int(w): float(r[1]) for w, r in rates.items()}
    assert sorted(victim) == [0, 100, 200, 300, 400, 500]
    assert min(victim[w] for w in (0, 100, 200)) > 25  # the hogs spin beside it
    assert max(victim[w] for w in (300, 400, 500)) < 5  # the hogs sleep
    assert max(control.values()) < 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_window_is_a_parameter(results: Path) -> None:
    rates = table(analyze(str(results), "--window-ms", "300"), "steal rate per VM")
    assert sorted(int(w) for w in rates) == [0, 300]
