"""PNG figures (matplotlib, Agg): steal over time per vCPU, and host CPU occupancy.

The PNGs carry no date or software metadata, so identical runs give identical bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from pvtime.sim.recorder import CATEGORIES  # noqa: E402
from pvtime.sim.results import RunResult  # noqa: E402

_METADATA = {"Software": None}
_COLORS = {"vcpu": "#1f77b4", "vmm": "#2ca02c", "noise": "#d62728"}


# How the steal figure draws each view of a vCPU's steal (the colour is the vCPU).
_STEAL_VIEWS: tuple[tuple[str, Literal["-", "--", ":"], str], ...] = (
    ("host_wait_ns", "-", "host truth: each wait counted as it passes"),
    ("record_steal_ns", "--", "stolen-time record: steps at each vCPU load, as the guest reads it"),
    ("guest_steal_ns", ":", "guest /proc/stat steal: steps at its ticks"),
)
_RATE_WINDOW_NS = 100_000_000  # per-sample rates swing with every timeslice: windows of ~100 ms
_LEGEND_VCPUS = 20  # the most vCPUs the legend names one by one


def steal_figure(result: RunResult, path: Path) -> None:
    """Top: cumulative steal per vCPU, each view a step line (gaps where a view has no value).
    Bottom: the host truth's steal rate over windows of ~100 ms (at most 100 %)."""
    t_s = result.grid_ns / 1e9
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    k = max(1, _RATE_WINDOW_NS // (result.spec.sample_ms * 1_000_000))
    idx = np.append(np.arange(0, len(result.grid_ns) - 1, k), len(result.grid_ns) - 1)
    vcpu_handles = []
    keys = [f"{row.vm}/vcpu{row.vcpu}" for row in result.vcpus]  # the scenario's order
    for i, key in enumerate(keys):
        cols = result.series[key]
        color = f"C{i % 10}"
        for col, style, _ in _STEAL_VIEWS:
            top.step(t_s, _ms(cols[col]), where="post", color=color, linestyle=style, linewidth=1.2)
        vcpu_handles.append(Line2D([], [], color=color, label=key.replace("/vcpu", "/")))
        truth = _ms(cols["host_wait_ns"])[idx]
        not_run = np.isnan(truth)
        truth[not_run] = 0.0  # nothing is counted before the vCPU first runs
        calls = cols["pv_time_st_calls"][idx]
        rate = 100.0 * 1e6 * np.diff(truth) / np.maximum(np.diff(result.grid_ns[idx]), 1)
        rate[(np.diff(calls) != 0) & ~not_run[:-1]] = np.nan  # PV_TIME_ST restarted a running count
        bottom.step(t_s[idx], np.append(rate, rate[-1:]), where="post", color=color)
    style_handles = [Line2D([], [], color="black", linestyle=style, label=label) for _, style, label in _STEAL_VIEWS]
    if len(vcpu_handles) > _LEGEND_VCPUS:  # a colour per vCPU, too many to name
        vcpu_handles = [Line2D([], [], color="grey", label=f"{len(keys)} vCPUs, a colour each (10 colours, repeated)")]
    top.set_ylabel("cumulative steal (ms)")
    top.set_title(f"{result.spec.name}: steal per vCPU")
    top.legend(handles=style_handles + vcpu_handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
               borderaxespad=0)
    bottom.set_ylabel("host truth: steal, % of each ~100 ms")
    bottom.set_xlabel("virtual time (s)")
    bottom.set_ylim(0, 105)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_METADATA)
    plt.close(fig)


def _ms(column: np.ndarray) -> np.ndarray:
    """A steal column in ms, NaN (a gap in a line) where it has no value."""
    return np.ma.filled(np.ma.masked_array(column, dtype=float), np.nan) / 1e6


def occupancy_figure(result: RunResult, path: Path) -> None:
    """One panel per host CPU: the share of each interval spent on vCPUs, VMM threads and noise."""
    keys = sorted(result.occupancy)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.4 * len(keys) + 1), sharex=True, squeeze=False)
    sample = int(result.spec.sample_ms * 1_000_000)
    for ax, key in zip(axes[:, 0], keys):
        busy = result.occupancy[key]
        nbins = busy.shape[1]
        starts = np.arange(nbins) * sample
        width = np.minimum(sample, result.duration_ns - starts)
        t_s = starts / 1e9
        bottom = np.zeros(nbins)
        for c, cat in enumerate(CATEGORIES):
            share = 100.0 * busy[c] / width
            ax.bar(t_s, share, width=width / 1e9, bottom=bottom, align="edge", color=_COLORS[cat],
                   label=cat, linewidth=0)
            bottom += share
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{key[0]}\ncpu{key[1]} %", fontsize=8)
    axes[0, 0].set_title(f"{result.spec.name}: host CPU occupancy")
    axes[0, 0].legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1, 0].set_xlabel("virtual time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_METADATA)
    plt.close(fig)
