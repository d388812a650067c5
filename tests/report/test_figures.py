"""The figures stay readable from 2 to 512 vCPUs and from 1 to 64 host CPUs: every label and
legend inside the image, a heatmap past a few dozen lines, the same bytes for the same run, no
library warnings; the steal-rate panel never above 100 %, and no value (grey) for a vCPU that has
not run."""

from __future__ import annotations

import logging
import warnings
from functools import cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from pvtime.report.figures import occupancy_figure, occupancy_plot, steal_figure, steal_plot, steal_rates
from pvtime.sim import scenario
from pvtime.sim.results import RunResult
from pvtime.sim.runner import run


def toml(name: str, cpus: int, vms: list[tuple[str, int]], duration_ms: int = 60) -> str:
    lines = [f'name = "{name}"', f"duration_ms = {duration_ms}", "trace = false", "sample_ms = 2",
             "[[host]]", 'name = "h"', f"cpus = {cpus}"]
    for vm, vcpus in vms:
        lines += ["[[vm]]", f'name = "{vm}"', 'host = "h"', f"vcpus = {vcpus}",
                  'guest = { kind = "model", busy_us = [1000, 6000], idle_us = [0, 2000] }']
    return "\n".join(lines) + "\n"


SCENARIOS = {
    "2 vCPUs on 1 CPU": toml("two", 1, [("a", 2)]),
    "24 vCPUs in 3 VMs on 4 CPUs": toml("mid", 4, [("web-frontend-pool", 8), ("db", 8), ("batch", 8)]),
    "512 vCPUs on 2 CPUs": toml("big", 2, [("big", 512)], duration_ms=30),
    "64 vCPUs in 16 VMs on 40 CPUs": toml("wide", 40, [(f"vm{i}", 4) for i in range(16)]),
}


@cache
def result(case: str) -> RunResult:
    return run(scenario.parse(SCENARIOS[case], f"{case}.toml"))


def fits(fig: Figure) -> bool:
    """Everything drawn (labels, ticks, titles, legends, colour bars) lies inside the image."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # type: ignore[attr-defined]
    width, height = fig.get_size_inches()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


@pytest.mark.parametrize("case", SCENARIOS)
def test_every_label_and_legend_fits_in_the_image(case: str) -> None:
    for plot in (steal_plot, occupancy_plot):
        fig = plot(result(case))
        try:
            assert fits(fig), (case, plot.__name__)
            assert fig.get_figheight() * fig.dpi <= 1500  # tall enough for a row per vCPU, not more
        finally:
            plt.close(fig)


def heatmaps(fig: Figure) -> list[QuadMesh]:
    """The heatmaps drawn (each with its colour bar; not the colour bars' own meshes)."""
    return [m for m in fig.findobj(QuadMesh) if isinstance(m, QuadMesh) and m.colorbar is not None]


def test_a_few_vcpus_get_lines_many_get_a_heatmap_with_a_row_each() -> None:
    few = steal_plot(result("2 vCPUs on 1 CPU"))
    many = steal_plot(result("24 vCPUs in 3 VMs on 4 CPUs"))
    try:
        assert heatmaps(few) == []
        legend = few.axes[0].get_legend()
        assert [t.get_text() for t in legend.get_texts()][-2:] == ["a/0", "a/1"]  # a line each, named
        (mesh,) = heatmaps(many)
        assert mesh.get_array().shape[0] == 24  # a row per vCPU
        # the VMs named in the scenario's order, on the heatmap's axis and in the legend
        heat_axis = next(ax for ax in many.axes if mesh in ax.collections)
        assert [t.get_text() for t in heat_axis.get_yticklabels()] == ["web-frontend-pool (8)", "db (8)", "batch (8)"]
        names = [t.get_text() for t in many.axes[0].get_legend().get_texts()]
        assert names[-3:] == ["web-frontend-pool (8 vCPUs)", "db (8 vCPUs)", "batch (8 vCPUs)"]
    finally:
        plt.close(few)
        plt.close(many)


def test_many_host_cpus_get_a_panel_per_host_and_a_heatmap() -> None:
    few, many = occupancy_plot(result("2 vCPUs on 1 CPU")), occupancy_plot(result("64 vCPUs in 16 VMs on 40 CPUs"))
    try:
        assert heatmaps(few) == [] and len(few.axes) == 1
        (mesh,) = heatmaps(many)
        assert mesh.get_array().shape[0] == 40  # a row per host CPU
        assert len(many.axes) == 3  # the host's panel, the heatmap, its colour bar
    finally:
        plt.close(few)
        plt.close(many)


def test_the_rate_is_the_truths_growth_never_above_100_percent_and_no_value_before_a_vcpu_runs() -> None:
    r = result("512 vCPUs on 2 CPUs")
    rates = steal_rates(r)
    assert rates.pct.shape == (512, len(rates.edges_ns) - 1)
    known = ~np.isnan(rates.pct)
    assert (rates.pct[known] >= 0).all() and (rates.pct[known] <= 100).all()
    for i, row in enumerate(r.vcpus):
        truth = r.series[f"{row.vm}/vcpu{row.vcpu}"]["host_wait_ns"]
        at_edges = truth[np.searchsorted(r.grid_ns, rates.edges_ns)]
        ran = ~np.ma.getmaskarray(at_edges)
        assert (known[i] == ran[1:]).all()  # a value once the vCPU has run by the window's end
        if row.first_run_ns is None:
            assert not known[i].any()  # never ran: grey throughout
        start = np.where(ran[:-1], np.ma.getdata(at_edges)[:-1], 0)
        growth = 100 * (np.ma.getdata(at_edges)[1:] - start) / np.diff(rates.edges_ns)
        assert np.allclose(rates.pct[i][known[i]], growth[known[i]])
    assert sum(row.first_run_ns is None for row in r.vcpus) > 0  # the case this test is about


@pytest.mark.parametrize("case", ["2 vCPUs on 1 CPU", "24 vCPUs in 3 VMs on 4 CPUs", "64 vCPUs in 16 VMs on 40 CPUs"])
def test_figures_are_the_same_bytes_for_the_same_run_without_warnings(case: str, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="matplotlib"):
        warnings.simplefilter("error")
        for folder, res in ((a, result(case)), (b, run(scenario.parse(SCENARIOS[case], f"{case}.toml")))):
            steal_figure(res, folder / "steal.png")
            occupancy_figure(res, folder / "occupancy.png")
    assert caplog.records == []
    for name in ("steal.png", "occupancy.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
