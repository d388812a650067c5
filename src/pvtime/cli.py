"""The `pvtime` command."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from pvtime.sim.contention import run_contention


@click.group()
@click.version_option(package_name="pvtime")
def main() -> None:
    """Arm paravirtualized time: stolen time and Live Physical Time, host to guest."""


@main.command()
@click.option("--duration", "duration_s", type=float, default=2.0, show_default=True,
              help="virtual seconds to simulate")
@click.option("--vcpus", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--hogs", type=click.IntRange(0, 64), default=1, show_default=True,
              help="CPU hogs sharing the host CPU")
@click.option("--seed", type=int, default=0, show_default=True)
def run(duration_s: float, vcpus: int, hogs: int, seed: int) -> None:
    """Run the default scenario: a model-guest VM under contention on one host CPU."""
    result = run_contention(int(duration_s * 1e9), vcpus=vcpus, hogs=hogs, seed=seed)
    table = Table(title=f"Steal after {duration_s:g} s: {vcpus} vCPU(s) and {hogs} hog(s) on 1 host CPU")
    for col in ("vCPU", "host run_delay (ms)", "record steal (ms)", "guest steal (ms)",
                "/proc/stat steal (USER_HZ)", "steal %", "guest - host (ns)"):
        table.add_column(col, justify="right")
    for row in result.vcpus:
        table.add_row(str(row.vcpu), f"{row.host_run_delay_ns / 1e6:.3f}", f"{row.record_steal_ns / 1e6:.3f}",
                      f"{row.guest_steal_ns / 1e6:.3f}", str(row.proc_stat_steal), f"{row.steal_pct:.1f}",
                      str(row.guest_steal_ns - row.host_run_delay_ns))
    console = Console()
    console.print(table)
    console.print("guest /proc/stat:")
    console.print(result.proc_stat, end="", markup=False, highlight=False)
