"""The `pvtime` command."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


@click.group()
@click.version_option(package_name="pvtime")
def main() -> None:
    """Arm paravirtualized time: stolen time and Live Physical Time, host to guest."""


@main.command()
@click.argument("scenario", required=False)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="results folder  [default: ./results/<scenario name>/]")
@click.option("--seed", type=int, default=None, help="override the scenario's seed")
@click.option("--duration", "duration_ms", type=click.IntRange(1), default=None,
              help="override the scenario's duration (virtual ms)")
@click.option("--no-progress", is_flag=True, help="do not show the progress bar")
def run(scenario: str | None, out: Path | None, seed: int | None, duration_ms: int | None,
        no_progress: bool) -> None:
    """Run SCENARIO (a TOML file or an embedded name; default: the embedded `default`)."""
    from pvtime.report import summary_table, write_results
    from pvtime.sim import scenario as scenarios
    from pvtime.sim.runner import run as run_scenario

    console = Console()
    try:
        sc = scenarios.load(scenario)
    except scenarios.ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    overrides = {k: v for k, v in (("seed", seed), ("duration_ms", duration_ms)) if v is not None}
    if overrides:
        sc = scenarios.Scenario(sc.spec.model_copy(update=overrides), sc.source)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[virtual]}"), TimeElapsedColumn(), console=console,
                  disable=no_progress, transient=True) as bar:
        job = bar.add_task(f"{sc.spec.name}", total=sc.spec.duration_ms, virtual="")

        def progress(now_ns: int, total_ns: int) -> None:
            bar.update(job, completed=now_ns / 1e6, virtual=f"{now_ns / 1e9:.2f}/{total_ns / 1e9:.2f} s virtual")

        result = run_scenario(sc, progress)
    console.print(summary_table(result))
    for vm in result.vms:
        if vm.stopped:
            console.print(f"[red]{vm.name} stopped:[/red] {vm.stopped}", markup=True, highlight=False)
    folder = out if out is not None else Path("results") / sc.spec.name
    paths = write_results(result, folder)
    console.print(f"results in {folder}/: " + ", ".join(p.name for p in paths), highlight=False)


@main.command("scenarios")
def scenarios_cmd() -> None:
    """List the embedded scenarios."""
    from pvtime.sim import scenario as scenarios

    table = Table(title="embedded scenarios (pvtime run NAME)")
    for col in ("name", "duration", "hosts", "VMs / vCPUs", "description"):
        table.add_column(col)
    for name in scenarios.embedded_names():
        spec = scenarios.load(name).spec
        table.add_row(name, f"{spec.duration_ms} ms", ", ".join(f"{h.name} ({h.cpus} CPUs)" for h in spec.host),
                      f"{len(spec.vm)} / {sum(v.vcpus for v in spec.vm)}", spec.description)
    Console().print(table)
