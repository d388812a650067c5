"""PNG figures (matplotlib, Agg): steal over time per vCPU, and host CPU occupancy.

The steal figure draws each guest view of steal (the stolen-time record, the guest's /proc/stat)
beside the host truth, and in panels of their own how far each view is from the truth: a view
equal to the truth hides under it in the cumulative panel, and lies on 0 in its own. Both figures
stay readable from 2 to hundreds of vCPUs and host CPUs: a line per vCPU (a panel per host CPU)
while there are few, past that a line per VM and a heatmap with a row per vCPU (per host CPU).
Lines are steps (a value holds until the next sample); legends sit outside the plot, in the
scenario's order. The PNGs carry no date or software metadata, so identical runs give identical
bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Colormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from pvtime.report.figure_data import FigureData, figure_data  # noqa: E402

if TYPE_CHECKING:
    from pvtime.sim.results import RunResult

_METADATA = {"Software": None}
_DPI = 100
_COLORS = {"vcpu": "#1f77b4", "vmm": "#2ca02c", "noise": "#d62728"}
_WIDTH_IN = 12.0
_LEGEND_FONT = 7

# How the steal figure draws each view of a vCPU's steal (the colour is the vCPU, or its VM).
_STEAL_VIEWS: tuple[tuple[str, Literal["-", "--", ":"], str], ...] = (
    ("host_wait_ns", "-", "host truth: each wait counted\nas it passes"),
    ("record_steal_ns", "--", "stolen-time record: steps at each\nvCPU load, as the guest reads it\n(none without PV time)"),
    ("guest_steal_ns", ":", "guest /proc/stat steal: steps\nat its ticks"),
)
_GUEST_VIEWS = _STEAL_VIEWS[1:]  # compared with the truth (the first) in panels of their own
_DIFF_LABELS = {"record_steal_ns": "stolen-time record\nminus host truth (ms)",
                "guest_steal_ns": "guest /proc/stat steal\nminus host truth (ms)"}
_RATE_WINDOW_NS = 100_000_000  # per-sample rates swing with every timeslice: windows of ~100 ms...
_MIN_WINDOWS = 20  # ...unless the run is too short to give this many
_LINES_UP_TO = 10  # vCPUs drawn a line each (a colour each); past that, a line per VM and a heatmap
_GROUPS_UP_TO = 10  # VMs drawn a line each in the heatmap figure; past that, one line for all vCPUs
_PANELS_UP_TO = 16  # host CPUs drawn a panel each; past that, a panel per host and a heatmap
_LABELLED_ROWS_UP_TO = 40  # heatmap row groups (VMs, hosts) named on the axis
_PANEL_GAP = 25.0  # between the occupancy panels of the CPUs, in % of a panel's height (subplots' hspace)
_NO_VALUE = "0.82"  # the heatmaps' grey for "no value"
# The difference panels' scale is linear to this many ms either side of 0, logarithmic beyond: a few
# guest ticks (4 ms at 250 Hz) stay linear beside a legacy guest's hundreds of ms of missing steal.
_DIFF_LINEAR_MS = 10.0
_MAX_HEIGHT_IN = 15.0  # the steal heatmap figure's height at most, however many vCPUs


def steal_figure(result: RunResult | FigureData, path: Path) -> None:
    """Write `steal_plot` as a PNG."""
    _save(steal_plot(result), path)


def occupancy_figure(result: RunResult | FigureData, path: Path) -> None:
    """Write `occupancy_plot` as a PNG."""
    _save(occupancy_plot(result), path)


def steal_plot(result: RunResult | FigureData) -> Figure:
    """Cumulative steal per vCPU (each view a step line); below it a panel per guest view (the
    record, /proc/stat) of that view minus the host truth (`guest_minus_truth`, 0: the truth);
    and the host truth's steal rate over windows of ~100 ms (at most 100 %): a line per vCPU, or
    past `_LINES_UP_TO` vCPUs a line per VM (the mean of its vCPUs, with the range of the host
    truth as a band) and a heatmap with a row per vCPU. A difference line's gid is the vCPU
    ("vm/N") or the VM, a space and the view's column ("web/0 record_steal_ns"); a view with no
    value at any sample has no line. The caller closes the figure (`matplotlib.pyplot.close`)."""
    data = figure_data(result)
    rates = steal_rates(data)
    if len(data.vcpus) <= _LINES_UP_TO:
        return _steal_lines(data, rates)
    return _steal_heatmap(data, rates)


def guest_minus_truth(run: RunResult | FigureData) -> dict[str, np.ndarray]:
    """Each guest view of each vCPU's steal minus its host truth (`host_wait_ns`), in ms: per view
    column (`record_steal_ns`, `guest_steal_ns`) an array (vCPUs in the scenario's order, samples),
    NaN where the view or the truth has no value. Below 0, the guest sees less steal than the host
    gave it (a legacy guest's /proc/stat: all of it)."""
    data = figure_data(run)
    keys = [f"{row.vm}/vcpu{row.vcpu}" for row in data.vcpus]
    if not keys:
        return {view: np.full((0, len(data.grid_ns)), np.nan) for view, _, _ in _GUEST_VIEWS}
    truth = np.ma.stack([data.series[k]["host_wait_ns"] for k in keys])
    # in whole ns first, so that equal views differ by exactly 0
    return {view: _ms(np.ma.stack([data.series[k][view] for k in keys]) - truth) for view, _, _ in _GUEST_VIEWS}


@dataclass(frozen=True)
class StealRates:
    """The host truth's steal rate per vCPU (rows, scenario order) over windows (columns); NaN
    where there is no value (the vCPU has not run yet, or PV_TIME_ST restarted its count)."""

    edges_ns: np.ndarray  # window boundaries (columns + 1)
    pct: np.ndarray  # (vCPUs, windows)

    @property
    def window_label(self) -> str:
        widths = np.diff(self.edges_ns)
        w = int(widths[0]) if len(widths) else 0
        return f"{w / 1e6:g} ms"


def steal_rates(run: RunResult | FigureData) -> StealRates:
    """The host truth's steal rate of each vCPU over windows of ~100 ms (of the sample interval
    in a run too short for `_MIN_WINDOWS` such windows)."""
    result = figure_data(run)
    grid = result.grid_ns
    samples = len(grid) - 1  # intervals
    per_window = max(1, min(_RATE_WINDOW_NS // (result.sample_ms * 1_000_000), samples // _MIN_WINDOWS))
    idx = np.append(np.arange(0, samples, per_window), samples) if samples else np.array([0])
    if not result.vcpus:
        return StealRates(grid[idx].astype(np.int64), np.full((0, max(len(idx) - 1, 0)), np.nan))
    cols = [result.series[f"{row.vm}/vcpu{row.vcpu}"] for row in result.vcpus]
    # one (vCPUs, samples) array per column: the same arithmetic as a vCPU at a time, at once
    truth = np.ma.filled(np.ma.masked_array(np.ma.stack([c["host_wait_ns"] for c in cols]), dtype=float),
                         np.nan)[:, idx]
    ran = ~np.isnan(truth)
    start = np.where(ran[:, :-1], truth[:, :-1], 0.0)  # counts start at 0 when the vCPU first runs
    pct = 100.0 * (truth[:, 1:] - start) / np.maximum(np.diff(grid[idx]), 1)
    calls = np.stack([np.asarray(c["pv_time_st_calls"]) for c in cols])[:, idx]
    pct[(np.diff(calls, axis=1) != 0) & ran[:, :-1]] = np.nan  # PV_TIME_ST restarted a running count
    # NaN where the vCPU had not run by the window's end
    return StealRates(grid[idx].astype(np.int64), pct)


def _steal_lines(result: FigureData, rates: StealRates) -> Figure:
    t_s = result.grid_ns / 1e9
    fig, (top, *diffs, bottom) = plt.subplots(4, 1, figsize=(_WIDTH_IN, 10), sharex=True,
                                              gridspec_kw={"height_ratios": [3.2, 1.7, 1.7, 2.0]})
    handles = []
    gaps = guest_minus_truth(result)
    names = [f"{row.vm}/{row.vcpu}" for row in result.vcpus]
    for i, (row, name) in enumerate(zip(result.vcpus, names)):
        cols = result.series[f"{row.vm}/vcpu{row.vcpu}"]
        color = f"C{i % 10}"
        for col, style, _ in _STEAL_VIEWS:
            top.step(t_s, _ms(cols[col]), where="post", color=color, linestyle=style, linewidth=1.2)
        handles.append(Line2D([], [], color=color, label=name))
        _stairs(bottom, rates.pct[i], rates.edges_ns / 1e9, color=color)
    _difference_panels(diffs, t_s, names, gaps)
    top.set_ylabel("cumulative steal (ms)")
    top.set_title(f"{result.name}: steal per vCPU")
    top.legend(handles=_view_handles() + handles, fontsize=_LEGEND_FONT, loc="upper left",
               bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    bottom.set_ylabel(f"host truth: steal,\n% of each {rates.window_label}")
    bottom.set_xlabel("virtual time (s)")
    bottom.set_ylim(0, 105)
    bottom.set_xlim(0, result.duration_ns / 1e9)
    _margins(fig, hspace=0.1, left_in=1.0)
    return fig


def _steal_heatmap(result: FigureData, rates: StealRates) -> Figure:
    rows = result.vcpus
    vms = list(dict.fromkeys(r.vm for r in rows))
    lines_in = [3.0, 1.5, 1.5]  # the cumulative panel, the two difference panels
    heat_in = min(_heat_height(len(rows)), _MAX_HEIGHT_IN - 1.5 - sum(lines_in))
    fig = plt.figure(figsize=(_WIDTH_IN, sum(lines_in) + heat_in + 1.5))
    gs = fig.add_gridspec(4, 2, height_ratios=[*lines_in, heat_in], width_ratios=[60, 1], wspace=0.02)
    top = fig.add_subplot(gs[0, 0])
    diffs = [fig.add_subplot(gs[1, 0], sharex=top), fig.add_subplot(gs[2, 0], sharex=top)]
    bottom = fig.add_subplot(gs[3, 0], sharex=top)
    cax = fig.add_subplot(gs[3, 1])
    t_s = result.grid_ns / 1e9
    groups = [(vm, [i for i, r in enumerate(rows) if r.vm == vm]) for vm in vms]
    if len(groups) > _GROUPS_UP_TO:
        groups = [(f"all {len(rows)} vCPUs", list(range(len(rows))))]
    handles = []
    for g, (label, members) in enumerate(groups):
        color = f"C{g % 10}"
        for col, style, _ in _STEAL_VIEWS:
            stack = np.ma.stack([result.series[f"{rows[i].vm}/vcpu{rows[i].vcpu}"][col] for i in members])
            top.step(t_s, _ms(stack.mean(axis=0)), where="post", color=color, linestyle=style, linewidth=1.2)
            if col == "host_wait_ns":
                top.fill_between(t_s, _ms(stack.min(axis=0)), _ms(stack.max(axis=0)), step="post", color=color,
                                 alpha=0.15, linewidth=0)
        n = len(members)
        handles.append(Patch(facecolor=color, edgecolor=color, alpha=0.6,
                             label=f"{label} ({n} vCPU{'s' if n > 1 else ''})" if len(groups) > 1 or n != len(rows)
                             else label))
    # a group's difference: the mean over its vCPUs that have both values (masked: no warning when none has)
    gaps = {view: np.ma.filled(np.ma.stack([np.ma.masked_invalid(per_vcpu[m]).mean(axis=0) for _, m in groups]),
                               np.nan) for view, per_vcpu in guest_minus_truth(result).items()}
    _difference_panels(diffs, t_s, [label for label, _ in groups], gaps)
    top.set_ylabel("cumulative steal per vCPU (ms)")
    top.set_title(f"{result.name}: steal of {len(rows)} vCPUs" + (f" in {len(vms)} VMs" if len(vms) > 1 else ""))
    note = Line2D([], [], color="none", label="line (every panel): the mean over\nthe vCPUs with a value; band: the\n"
                                              "host truth's lowest to highest")
    top.legend(handles=_view_handles() + [note] + handles, fontsize=_LEGEND_FONT, loc="upper left",
               bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    plt.setp(top.get_xticklabels(), visible=False)
    mesh = bottom.pcolormesh(rates.edges_ns / 1e9, np.arange(len(rows) + 1), np.ma.masked_invalid(rates.pct),
                             cmap=_heat_cmap(), vmin=0, vmax=100, shading="flat")
    left_in = _row_groups(bottom, [(vm, sum(1 for r in rows if r.vm == vm)) for vm in vms], "vCPU")
    bottom.set_xlabel("virtual time (s)")
    bottom.set_xlim(0, result.duration_ns / 1e9)
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label(f"host truth: steal, % of each {rates.window_label}\ngrey: no value (not run yet,\n"
                  "or PV_TIME_ST restarted the count)", fontsize=8)
    _margins(fig, hspace=0.1, left_in=max(left_in, 1.0))
    return fig


def _difference_panels(axes: list[Axes], t_s: np.ndarray, names: list[str], gaps: dict[str, np.ndarray]) -> None:
    """A panel per guest view: each line (a vCPU's or a VM's, the colour of its cumulative lines)
    that view minus the host truth, on one scale for both panels: linear near 0, where a few ticks
    show, logarithmic beyond, where a view missing all the steal shows."""
    for ax, (view, style, _) in zip(axes, _GUEST_VIEWS):
        ax.axhline(0.0, color="black", linewidth=0.8)  # the host truth: solid, as in the cumulative panel
        for i, name in enumerate(names):
            if not np.isnan(gaps[view][i]).all():
                ax.step(t_s, gaps[view][i], where="post", color=f"C{i % 10}", linestyle=style, linewidth=1.2,
                        gid=f"{name} {view}")
        ax.set_ylabel(_DIFF_LABELS[view], fontsize=9)
        plt.setp(ax.get_xticklabels(), visible=False)
    known = np.concatenate([g[~np.isnan(g)] for g in gaps.values()] + [np.zeros(1)])
    low, high = -_diff_bound(-known.min()), _diff_bound(known.max()) if known.max() > 0 else 0.3 * _DIFF_LINEAR_MS
    for ax in axes:
        ax.set_yscale("symlog", linthresh=_DIFF_LINEAR_MS, linscale=1.5)
        ax.set_ylim(low, high)
        ax.yaxis.set_major_locator(FixedLocator(_diff_ticks(low, high)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}".replace("-", "\u2212")))
        ax.yaxis.set_minor_locator(NullLocator())
    axes[0].text(1.01, 0.0, f"0 (solid): the host truth,\neach wait counted as it\npasses (as on top);\nbelow 0: the guest sees\nless steal than the host.\n"
                            f"Scale linear within \u00b1{_DIFF_LINEAR_MS:g} ms,\nlogarithmic beyond.",
                 transform=axes[0].transAxes, fontsize=_LEGEND_FONT, va="center", ha="left")


def _diff_bound(reach: float) -> float:
    """How far the difference panels' scale goes from 0 to show a difference of `reach` ms: past a
    decade of the logarithmic part, to the next power of 10 (labelled)."""
    if reach <= _DIFF_LINEAR_MS:
        return 1.1 * _DIFF_LINEAR_MS
    if reach <= 10 * _DIFF_LINEAR_MS:
        return 1.3 * reach
    return float(10 ** np.ceil(np.log10(1.05 * reach)))


def _diff_ticks(low: float, high: float) -> list[float]:
    """The difference panels' ticks within [low, high]: 0, +-5 and +-10 ms (the linear part, with
    `_DIFF_LINEAR_MS` 10), then 50, 100 ms or, past a decade, 100, 1000 ms... (the logarithmic
    part: a label per decade is as many as it has room for)."""
    within_a_decade = max(-low, high) <= 13 * _DIFF_LINEAR_MS  # `_diff_bound`'s reach: 10 * 1.3
    mults = (5, 10) if within_a_decade else (10,)
    steps = [_DIFF_LINEAR_MS / 2, _DIFF_LINEAR_MS] + [_DIFF_LINEAR_MS * m * 10**k for k in range(9) for m in mults]
    return [-v for v in reversed(steps) if -v >= low] + [0.0] + [v for v in steps if v <= high]


def occupancy_plot(run: RunResult | FigureData) -> Figure:
    """The share of each sample interval each host CPU spent on vCPUs, VMM threads and noise:
    stacked steps in a panel per CPU, or past `_PANELS_UP_TO` CPUs a panel per host (the mean of
    its CPUs) and a heatmap of each CPU's busy share. The caller closes the figure."""
    result = figure_data(run)
    keys = list(result.occupancy)  # the scenario's hosts in order, each CPU in order
    if len(keys) <= _PANELS_UP_TO:
        return _occupancy_panels(result, keys)
    return _occupancy_heatmap(result, keys)


def _bins(result: FigureData, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample intervals' edges (s) and widths (ns); the last one ends at the end of the run."""
    sample = int(result.sample_ms * 1_000_000)
    starts = np.arange(nbins, dtype=np.int64) * sample
    edges = np.append(starts, min(nbins * sample, result.duration_ns)) if nbins else np.array([0])
    return edges / 1e9, np.maximum(np.diff(edges), 1)


def _stacked(ax: Axes, busy: np.ndarray, edges_s: np.ndarray, width: np.ndarray, categories: tuple[str, ...],
             y0: float = 0.0) -> None:
    """Stacked step areas from `y0` up: each category's share (%) of each interval on top of the
    ones before."""
    base = np.zeros(busy.shape[1])
    for c, cat in enumerate(categories):
        top = base + 100.0 * busy[c] / width
        # fill_between's steps, not stairs(): a StepPatch's data limits cost a Python loop per step
        ax.fill_between(edges_s, y0 + np.append(top, top[-1:]), y0 + np.append(base, base[-1:]), step="post",
                        color=_COLORS[cat], linewidth=0)
        base = top
    ax.set_xlim(edges_s[0], edges_s[-1])


def _category_handles(categories: tuple[str, ...]) -> list[Patch]:
    return [Patch(color=_COLORS[cat], label=cat) for cat in categories] + [
        Patch(facecolor="white", edgecolor="0.6", label="idle")]


def _occupancy_panels(result: FigureData, keys: list[tuple[str, int]]) -> Figure:
    """A panel per CPU, top to bottom, each 0-100 % with its name on the left: drawn as bands of
    one axes, which costs a third of what as many axes cost (their ticks), and looks the same."""
    n = len(keys)
    fig = plt.figure(figsize=(_WIDTH_IN, 1.2 * n + 1.1))
    ax = fig.add_subplot()
    edges_s, width = _bins(result, next(iter(result.occupancy.values())).shape[1])
    step = 100.0 + _PANEL_GAP
    bottoms = [(n - 1 - i) * step for i in range(n)]
    for key, y0 in zip(keys, bottoms):
        _stacked(ax, result.occupancy[key], edges_s, width, result.categories, y0)
        ax.add_patch(Rectangle((edges_s[0], y0), edges_s[-1] - edges_s[0], 100.0, fill=False, linewidth=0.8,
                               edgecolor="black", clip_on=False))  # the panel's frame
        ax.text(-0.055, y0 + 50.0, f"{key[0]}\ncpu{key[1]} %", transform=ax.get_yaxis_transform(), rotation=90,
                ha="center", va="center", fontsize=8)
    ax.set_yticks([y0 + v for y0 in bottoms for v in (0, 50, 100)], ["0", "50", "100"] * n)
    ax.set_ylim(0, (n - 1) * step + 100.0)
    ax.spines[:].set_visible(False)
    _margins(fig, hspace=0.0, right_in=1.0)
    # the time axis's tick marks at the foot of every panel above the lowest, as separate panels have
    ticks = [x for x in ax.get_xticks() if edges_s[0] <= x <= edges_s[-1]]
    axes_h_in = fig.get_figheight() * (fig.subplotpars.top - fig.subplotpars.bottom)
    mark = 3.5 / 72 * ((n - 1) * step + 100.0) / axes_h_in  # matplotlib's 3.5-point tick length, in data units
    ax.add_collection(LineCollection([[(x, y0), (x, y0 - mark)] for y0 in bottoms[:-1] for x in ticks],
                                     colors="black", linewidths=0.8, clip_on=False))
    ax.set_title(f"{result.name}: host CPU occupancy (share of each {result.sample_ms} ms)")
    ax.legend(handles=_category_handles(result.categories), fontsize=_LEGEND_FONT, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("virtual time (s)")
    return fig


def _occupancy_heatmap(result: FigureData, keys: list[tuple[str, int]]) -> Figure:
    hosts = list(dict.fromkeys(h for h, _ in keys))
    heat_in = _heat_height(len(keys))
    panel_in = 1.3
    ratios = [panel_in] * len(hosts) + [heat_in]
    fig = plt.figure(figsize=(_WIDTH_IN, sum(ratios) + 0.35 * len(hosts) + 1.0))
    gs = fig.add_gridspec(len(ratios), 2, height_ratios=ratios, width_ratios=[60, 1], wspace=0.02)
    heat = fig.add_subplot(gs[-1, 0])
    edges_s, width = _bins(result, next(iter(result.occupancy.values())).shape[1])
    for h, host in enumerate(hosts):
        ax = fig.add_subplot(gs[h, 0], sharex=heat)
        cpus = [result.occupancy[k] for k in keys if k[0] == host]
        _stacked(ax, np.mean(cpus, axis=0), edges_s, width, result.categories)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{host}\n{len(cpus)} CPUs, %", fontsize=8)
        plt.setp(ax.get_xticklabels(), visible=False)
        if h == 0:
            ax.set_title(f"{result.name}: host CPU occupancy (share of each {result.sample_ms} ms; "
                         "per host: the mean of its CPUs)")
            ax.legend(handles=_category_handles(result.categories), fontsize=_LEGEND_FONT, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    busy = np.array([100.0 * result.occupancy[k].sum(axis=0) / width for k in keys])
    mesh = heat.pcolormesh(edges_s, np.arange(len(keys) + 1), busy, cmap=_heat_cmap(), vmin=0, vmax=100,
                           shading="flat")
    left_in = _row_groups(heat, [(host, sum(1 for k in keys if k[0] == host)) for host in hosts], "CPU")
    heat.set_xlabel("virtual time (s)")
    bar = fig.colorbar(mesh, cax=fig.add_subplot(gs[-1, 1]))
    bar.set_label(f"busy, % of each {result.sample_ms} ms\n(vCPUs, VMM threads, noise)", fontsize=8)
    _margins(fig, hspace=0.25, left_in=left_in, right_in=1.4)
    return fig


def _margins(fig: Figure, *, hspace: float, left_in: float = 0.85, right_in: float = 2.4) -> None:
    """Room for the labels on the left, the legend (and colour bar) on the right: fixed in inches,
    cheaper than tight_layout, which draws the figure once more to measure it."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left_in / w, right=1 - right_in / w, top=1 - 0.45 / h, bottom=0.55 / h, hspace=hspace)


def _row_groups(ax: Axes, groups: list[tuple[str, int]], unit: str) -> float:
    """Rows top to bottom in the scenario's order, consecutive rows of a group (a VM's vCPUs, a
    host's CPUs) named at their middle and ruled off from the next group; return the left margin
    (inches) the names need."""
    total = sum(n for _, n in groups)
    ax.set_ylim(total, 0)
    if len(groups) > _LABELLED_ROWS_UP_TO:
        ax.set_ylabel(f"{unit}s, in the scenario's order")
        return 0.85
    starts = np.cumsum([0] + [n for _, n in groups])
    names = [f"{name} ({n})" if n > 1 else name for name, n in groups]
    ax.set_yticks([(a + b) / 2 for a, b in zip(starts, starts[1:])], names, fontsize=7)
    for y in starts[1:-1]:
        ax.axhline(y, color="white", linewidth=0.8)
    ax.set_ylabel(f"one row per {unit}, grouped")
    return 0.45 + 0.06 * max(len(n) for n in names)  # 7-point text: about 0.06 inch a character


def _heat_height(rows: int) -> float:
    """A heatmap's height (inches): about a pixel per row or more, within reason."""
    return float(np.clip(1.0 + rows * 0.012, 2.5, 9.0))


def _heat_cmap() -> Colormap:
    return plt.get_cmap("viridis").with_extremes(bad=_NO_VALUE)


def _view_handles() -> list[Line2D]:
    return [Line2D([], [], color="black", linestyle=style, label=label) for _, style, label in _STEAL_VIEWS]


def _stairs(ax: Axes, values: np.ndarray, edges: np.ndarray, *, color: str) -> None:
    """A step line of per-window values (gaps where NaN)."""
    ax.stairs(values, edges, color=color, linewidth=1.2, baseline=None)


def _ms(column: np.ndarray) -> np.ndarray:
    """A steal column in ms, NaN (a gap in a line) where it has no value."""
    return np.ma.filled(np.ma.masked_array(column, dtype=float), np.nan) / 1e6


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=_DPI, metadata=_METADATA)
    plt.close(fig)
