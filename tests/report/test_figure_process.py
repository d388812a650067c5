"""Figures drawn in a process of their own (`pvtime run`) are the bytes drawn in the run's process,
run after run; the figure process's failure reaches the run; an unused process ends."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import pytest

from pvtime.report.figure_process import FIGURES, FigureProcess, can_fork
from pvtime.report.figures import occupancy_figure, steal_figure
from pvtime.sim import scenario
from pvtime.sim.results import RunResult
from pvtime.sim.runner import run

pytestmark = pytest.mark.skipif(not can_fork(), reason="the figure process is forked")

# 12 host CPUs: the occupancy panels; 12 vCPUs: the steal heatmap (the embedded default, with its
# 8 CPUs and 8 vCPUs, gets the other two kinds in tests/report/test_results_folder.py)
TOML = """name = "fig"
duration_ms = 120
sample_ms = 5
trace = false
[[host]]
name = "h"
cpus = 12
[[vm]]
name = "a"
host = "h"
vcpus = 12
guest = { kind = "model", busy_us = [1000, 6000], idle_us = [0, 2000] }
[[noise]]
name = "hog"
host = "h"
count = 2
"""


@cache
def result() -> RunResult:
    return run(scenario.parse(TOML, "fig.toml"))


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FIGURES}


def test_the_figure_process_draws_the_same_bytes_as_the_run_run_after_run(tmp_path: Path) -> None:
    here, there, again = tmp_path / "here", tmp_path / "there", tmp_path / "again"
    here.mkdir()
    steal_figure(result(), here / "steal.png")
    occupancy_figure(result(), here / "occupancy.png")
    for folder in (there, again):
        folder.mkdir()
        with FigureProcess() as figures:
            assert figures.send(result(), folder) == [folder / name for name in FIGURES]
            figures.wait()
    assert digests(there) == digests(here) == digests(again)


def test_a_failure_in_the_figure_process_is_raised_in_the_run(tmp_path: Path) -> None:
    with FigureProcess() as figures, pytest.raises(FileNotFoundError):
        figures.send(result(), tmp_path / "no such folder")
        figures.wait()


def test_a_figure_process_given_nothing_to_draw_ends_with_the_block() -> None:
    with FigureProcess() as figures:
        assert figures.exit_status is None  # importing matplotlib, waiting for a job
    assert figures.exit_status == 0
