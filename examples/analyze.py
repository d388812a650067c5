"""Read a pvtime results folder with pandas: the steal rate of each VM over time, and how closely
each VM's guest saw the steal its host gave it.

    pvtime run noisy-neighbour --out results/nn
    python examples/analyze.py results/nn [--window-ms 100] [--plot steal_by_vm.png]

It reads two files of the folder (docs/results.md describes them): series.parquet, a row per vCPU
per sample time, and summary.json, the run's end state. Needs pandas (and matplotlib for --plot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def load_series(folder: Path) -> pd.DataFrame:
    """series.parquet; the steal columns are nullable (NaN where a view has no value)."""
    return pd.read_parquet(folder / "series.parquet")


def steal_growth(series: pd.DataFrame) -> pd.DataFrame:
    """Per vCPU and sample interval: its length and how much the host truth (host_wait_ns) grew.

    The counts start at 0 when the vCPU first runs, and restart at 0 when its guest calls
    PV_TIME_ST again (pv_time_st_calls grows): such an interval has no growth (NaN).
    """
    s = series.sort_values(["vm", "vcpu", "time_ns"])
    by_vcpu = s.groupby(["vm", "vcpu"], sort=False)
    prev_wait = by_vcpu["host_wait_ns"].shift()
    prev_calls = by_vcpu["pv_time_st_calls"].shift()
    growth = s["host_wait_ns"] - prev_wait.fillna(0)  # before the first run: counted from 0
    growth[s["pv_time_st_calls"] != prev_calls] = float("nan")  # a restart (or the first row)
    return pd.DataFrame({"vm": s["vm"], "vcpu": s["vcpu"], "start_ns": by_vcpu["time_ns"].shift(),
                         "dt_ns": by_vcpu["time_ns"].diff(), "growth_ns": growth}).dropna(subset=["start_ns"])


def steal_rate_by_vm(series: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """The host truth's steal rate (%) of each VM over windows of `window_ms`: per vCPU, its
    growth over its known time in the window; per VM, the mean over its vCPUs."""
    g = steal_growth(series).dropna(subset=["growth_ns"])
    g["window_ms"] = (g["start_ns"] // (window_ms * 1_000_000) * window_ms).astype(int)
    per_vcpu = g.groupby(["window_ms", "vm", "vcpu"])[["growth_ns", "dt_ns"]].sum()
    per_vcpu["rate_pct"] = 100 * per_vcpu["growth_ns"] / per_vcpu["dt_ns"]
    order = list(dict.fromkeys(series["vm"]))  # the scenario's order
    return per_vcpu.groupby(["window_ms", "vm"])["rate_pct"].mean().unstack("vm")[order]


def per_vm(series: pd.DataFrame, summary: dict) -> pd.DataFrame:
    """Per VM: the mean steal of its vCPUs by the end (host truth, as each wait passes), its share
    of the run, and the largest gaps between what the host took and what the guest saw."""
    end = series[series["time_ns"] == series["time_ns"].max()]
    seen = series.dropna(subset=["record_steal_ns"])
    rows = []
    for vm, vcpus in end.groupby("vm", sort=False):
        mine = seen[seen["vm"] == vm]
        lag = (mine["host_run_delay_ns"] - mine["record_steal_ns"]).abs().max()
        guest = (mine["record_steal_ns"] - mine["guest_steal_ns"]).abs().max()
        rows.append({"vm": vm, "vcpus": len(vcpus), "steal_ms": vcpus["host_wait_ns"].mean() / 1e6,
                     "steal_pct": 100 * vcpus["host_wait_ns"].mean() / summary["duration_ns"],
                     "record_vs_truth_ms": None if pd.isna(lag) else lag / 1e6,
                     "guest_vs_record_ms": None if pd.isna(guest) else guest / 1e6})
    return pd.DataFrame(rows).set_index("vm")


def plot(rates: pd.DataFrame, window_ms: int, title: str, path: Path) -> None:
    """The steal rate per VM as step lines, each window's value held across it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges_s = [*rates.index, rates.index[-1] + window_ms] if len(rates) else [0]
    fig, ax = plt.subplots(figsize=(9, 4))
    for vm in rates.columns:
        ax.stairs(rates[vm], [e / 1000 for e in edges_s], label=vm, linewidth=1.5)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("steal, % of each window (host truth)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder (pvtime run --out)")
    parser.add_argument("--window-ms", type=int, default=100, help="the rate's window (virtual ms)  [100]")
    parser.add_argument("--plot", type=Path, help="also draw the steal rate per VM into this PNG")
    args = parser.parse_args(argv)
    summary = json.loads((args.results / "summary.json").read_text())
    series = load_series(args.results)
    print(f"{summary['scenario']} (seed {summary['seed']}, {summary['duration_ns'] / 1e6:g} ms), "
          f"{len(summary['vcpus'])} vCPUs")
    if series.empty:
        return 0  # a scenario of host tasks only: no steal to analyse
    print("\nsteal per VM by the end (mean per vCPU; the largest record and guest gaps over the run):")
    print(per_vm(series, summary).to_string(float_format=lambda x: f"{x:.3f}", na_rep="-"))
    rates = steal_rate_by_vm(series, args.window_ms)
    print(f"\nsteal rate per VM, % of each {args.window_ms} ms (host truth, mean of the VM's vCPUs):")
    print(rates.to_string(float_format=lambda x: f"{x:.1f}", na_rep="-"))
    if args.plot is not None:
        plot(rates, args.window_ms, f"{summary['scenario']}: steal rate per VM", args.plot)
        print(f"\nwritten {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
