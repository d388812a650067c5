"""PNG figures (matplotlib, Agg): steal over time per vCPU, and host CPU occupancy.

The PNGs carry no date or software metadata, so identical runs give identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pvtime.sim.recorder import CATEGORIES  # noqa: E402
from pvtime.sim.results import RunResult  # noqa: E402

_METADATA = {"Software": None}
_COLORS = {"vcpu": "#1f77b4", "vmm": "#2ca02c", "noise": "#d62728"}


def steal_figure(result: RunResult, path: Path) -> None:
    """Top: cumulative steal per vCPU (host truth solid, guest /proc/stat dashed).
    Bottom: steal rate per sample interval as the host measures it."""
    t_s = result.grid_ns / 1e9
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for i, (key, cols) in enumerate(sorted(result.series.items())):
        color = f"C{i % 10}"
        truth = cols["host_run_delay_ns"]
        top.plot(t_s, truth / 1e6, color=color, label=f"{key} host run_delay")
        guest = cols["guest_steal_ns"]
        if (guest >= 0).all():
            top.plot(t_s, guest / 1e6, color=color, linestyle="--", label=f"{key} guest /proc/stat")
        # Over windows of ~100 ms: per-sample rates swing with every timeslice.
        k = max(1, 100_000_000 // (result.spec.sample_ms * 1_000_000))
        idx = np.append(np.arange(0, len(result.grid_ns) - 1, k), len(result.grid_ns) - 1)
        dt = np.diff(result.grid_ns[idx])
        rate = 100.0 * np.diff(truth[idx]) / np.maximum(dt, 1)
        bottom.step(t_s[idx][1:], rate, where="pre", color=color, label=key)
    top.set_ylabel("cumulative steal (ms)")
    top.set_title(f"{result.spec.name}: steal per vCPU")
    top.legend(fontsize=7, ncol=2)
    bottom.set_ylabel("host steal (% of ~100 ms)")
    bottom.set_xlabel("virtual time (s)")
    bottom.set_ylim(0, 105)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_METADATA)
    plt.close(fig)


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
