"""The figures stay readable from 2 to 512 vCPUs and from 1 to 64 host CPUs: every label and
legend inside the image, a heatmap past a few dozen lines, the same bytes for the same run, no
library warnings; the steal-rate panel never above 100 %, and no value (grey) for a vCPU that has
not run; the difference panels draw each guest view minus the host truth (a legacy guest's
/proc/stat: minus all of it), on a scale that holds every value."""

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
from matplotlib.lines import Line2D

from pvtime.report.figures import (guest_minus_truth, occupancy_figure, occupancy_plot, steal_figure, steal_plot,
                                   steal_rates)
from pvtime.sim import scenario
from pvtime.sim.results import RunResult
from pvtime.sim.runner import run


def toml(name: str, cpus: int, vms: list[tuple[str, int]], duration_ms: int = 60, legacy: tuple[str, ...] = ()) -> str:
    lines = [f'name = "{name}"', f"duration_ms = {duration_ms}", "trace = false", "sample_ms = 2",
             "[[host]]", 'name = "h"', f"cpus = {cpus}"]
    for vm, vcpus in vms:
        lines += ["[[vm]]", f'name = "{vm}"', 'host = "h"', f"vcpus = {vcpus}",
                  'guest = { kind = "model", busy_us = [1000, 6000], idle_us = [0, 2000] }']
        if vm in legacy:
            lines += ["pvtime = false"]
    return "\n".join(lines) + "\n"


SCENARIOS = {
    "2 vCPUs on 1 CPU": toml("two", 1, [("a", 2)]),
    "24 vCPUs in 3 VMs on 4 CPUs": toml("mid", 4, [("web-frontend-pool", 8), ("db", 8), ("batch", 8)]),
    "512 vCPUs on 2 CPUs": toml("big", 2, [("big", 512)], duration_ms=30),
    "64 vCPUs in 16 VMs on 40 CPUs": toml("wide", 40, [(f"vm{i}", 4) for i in range(16)]),
    "3 vCPUs on 1 CPU, one without PV time": toml("mixed", 1, [("pv", 2), ("legacy", 1)], legacy=("legacy",)),
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


def gap_lines(fig: Figure) -> dict[str, np.ndarray]:
    """The difference panels' lines by their gid ("vm/N column" or "vm column"): the values drawn."""
    return {str(line.get_gid()): np.asarray(line.get_ydata(), dtype=float) for line in fig.findobj(Line2D)
            if isinstance(line, Line2D) and line.get_gid()}


def minus_truth_ms(cols: dict[str, np.ndarray], view: str) -> np.ma.MaskedArray:
    """A view minus the host truth, in ms, masked where either has no value."""
    return (np.ma.masked_array(cols[view], dtype=np.int64) - np.ma.masked_array(cols["host_wait_ns"],
                                                                                  dtype=np.int64)) / 1e6


def test_the_difference_panels_draw_each_view_minus_the_truth_and_a_legacy_guest_misses_all_of_it() -> None:
    r = result("3 vCPUs on 1 CPU, one without PV time")
    fig = steal_plot(r)
    try:
        drawn = gap_lines(fig)
        for row in r.vcpus:
            cols = r.series[f"{row.vm}/vcpu{row.vcpu}"]
            for view in ("record_steal_ns", "guest_steal_ns"):
                want = minus_truth_ms(cols, view)
                name = f"{row.vm}/{row.vcpu} {view}"
                if want.count() == 0:
                    assert name not in drawn  # no value at any sample: no line
                    continue
                assert np.array_equal(drawn[name], np.ma.filled(want, np.nan), equal_nan=True), name
        # without PV time the guest reads no record, and its /proc/stat sees none of the truth
        assert "legacy/0 record_steal_ns" not in drawn
        truth = np.ma.masked_array(r.series["legacy/vcpu0"]["host_wait_ns"], dtype=float) / 1e6
        assert np.array_equal(drawn["legacy/0 guest_steal_ns"], np.ma.filled(-truth, np.nan), equal_nan=True)
        assert np.nanmin(drawn["legacy/0 guest_steal_ns"]) < -10  # past the linear part of the scale
        # with PV time the views lag the truth by less: a tick's worth, not all of it
        pv = np.concatenate([drawn[f"pv/{n} {v}"] for n in (0, 1) for v in ("record_steal_ns", "guest_steal_ns")])
        assert np.nanmin(pv) < 0 and np.nanmin(pv) > np.nanmin(drawn["legacy/0 guest_steal_ns"])
        # both panels on one scale that holds every value drawn
        panels = [ax for ax in fig.axes if any(line.get_gid() for line in ax.get_lines())]
        assert len(panels) == 2 and panels[0].get_ylim() == panels[1].get_ylim()
        low, high = panels[0].get_ylim()
        values = np.concatenate(list(drawn.values()))
        assert low <= np.nanmin(values) and np.nanmax(values) <= high
    finally:
        plt.close(fig)


@pytest.mark.parametrize("case", ["24 vCPUs in 3 VMs on 4 CPUs", "512 vCPUs on 2 CPUs"])
def test_past_a_few_vcpus_a_vms_difference_is_the_mean_over_its_vcpus_with_a_value(case: str) -> None:
    r = result(case)
    fig = steal_plot(r)
    try:
        drawn = gap_lines(fig)
        for vm in dict.fromkeys(row.vm for row in r.vcpus):
            for view in ("record_steal_ns", "guest_steal_ns"):
                per_vcpu = np.ma.stack([minus_truth_ms(r.series[f"{row.vm}/vcpu{row.vcpu}"], view)
                                        for row in r.vcpus if row.vm == vm])
                counted = per_vcpu.count(axis=0)
                assert counted.max() < len(per_vcpu) or case != "512 vCPUs on 2 CPUs"  # some never ran
                want = np.where(counted > 0, np.ma.filled(per_vcpu.sum(axis=0), 0.0) / np.maximum(counted, 1),
                                np.nan)
                assert np.allclose(drawn[f"{vm} {view}"], want, equal_nan=True), (vm, view)
    finally:
        plt.close(fig)


def test_guest_minus_truth_is_zero_where_a_view_equals_the_truth_and_nan_where_either_has_no_value() -> None:
    r = result("2 vCPUs on 1 CPU")
    gaps = guest_minus_truth(r)
    for i, row in enumerate(r.vcpus):
        cols = r.series[f"{row.vm}/vcpu{row.vcpu}"]
        for view in ("record_steal_ns", "guest_steal_ns"):
            same = ~np.ma.getmaskarray(cols[view]) & ~np.ma.getmaskarray(cols["host_wait_ns"])
            same &= np.ma.getdata(cols[view]) == np.ma.getdata(cols["host_wait_ns"])
            assert (gaps[view][i][same] == 0).all()
            unknown = np.ma.getmaskarray(cols[view]) | np.ma.getmaskarray(cols["host_wait_ns"])
            assert np.isnan(gaps[view][i]).tolist() == unknown.tolist()
            assert same.any() and unknown.any()  # both cases occur
