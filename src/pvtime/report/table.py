"""The per-vCPU summary table: host run_delay, the steal the guest saw, /proc/stat steal %, and
the differences."""

from __future__ import annotations

from rich.table import Table

from pvtime.sim.runner import RunResult


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f}"


def summary_table(result: RunResult) -> Table:
    """One row per vCPU."""
    spec = result.spec
    table = Table(title=f"{spec.name}: steal per vCPU after {spec.duration_ms} ms (seed {spec.seed})")
    table.caption = ("host run_delay: the vCPU thread's wait (truth); guest clock: the stolen-time "
                     "record; /proc/stat: the guest's accounted steal (ticks); times in ms")
    for col in ("vCPU", "pv", "host run_delay", "guest clock", "/proc/stat", "steal %",
                "clock−host ns", "stat−host"):
        table.add_column(col, justify="right")
    for row in result.vcpus:
        pct = row.steal_pct
        diff = row.record_minus_host_ns
        lag = row.proc_stat_minus_host_ns
        table.add_row(
            f"{row.vm}/{row.vcpu}", "on" if row.pvtime else "off", _ms(row.host_run_delay_ns),
            _ms(row.record_steal_ns), _ms(row.guest_steal_ns), "-" if pct is None else f"{pct:.1f}",
            "-" if diff is None else str(diff), "-" if lag is None else f"{lag / 1e6:.1f}")
    return table
