"""`pvtime sweep`: a scenario over seeds and `--set` values, each run on a dask worker as `pvtime run`
would run it (`pvtime.sim.sweep`), and the results gathered into one folder:

    DIR/runs/<values>,seed=K/   each run's results folder, the files `pvtime run` writes
    DIR/vcpus.parquet           a row per run and vCPU: the swept values, the seed, summary.json's figures
    DIR/aggregate.{csv,parquet} per setting, VM and metric: n, mean, std and the Student-t 95 % interval
    DIR/sweep.json              the plan and each run's status (a failed run's error and its `pvtime run`)
    DIR/provenance.json         versions, the command line, the cluster and the wall time

Every file but the provenance.json files is the same for the same command, whatever the cluster and
the order in which runs finish (a failed run's traceback in sweep.json aside).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pvtime.cli.exits import EXIT_OK, EXIT_TOOL_ERROR, Answer, ToolError
from pvtime.cli.runfolder import write_run

if TYPE_CHECKING:
    from distributed import Client
    from rich.table import Table

    from pvtime.sim.overrides import Override
    from pvtime.sim.scenario import Scenario
    from pvtime.sim.sweep import Aggregate, Outcome, SweepRun

# summary.json's per-vCPU keys that are not integers (the rest are int64 columns)
_STRINGS = {"host", "vm", "task", "guest", "guest_steal_note"}
_FLOATS = {"steal_pct", "host_steal_pct"}
_BOOLS = {"pvtime"}


@dataclass(frozen=True)
class RunJob:
    """What a worker needs to run a sweep's run as `pvtime run` does: the scenario's text and the
    name it was loaded by (results name it), and the command line for provenance.json."""

    text: str
    source: str
    argv: tuple[str, ...]


def run_files(job: RunJob, run: SweepRun) -> dict[str, bytes]:
    """On a worker: run `run` of the sweep and write its results folder as `pvtime run` writes it,
    in a temporary folder of the worker's; return its files by name (the worker's file system
    need not be the client's)."""
    import tempfile

    from pvtime.report.provenance import now_utc
    from pvtime.sim import scenario
    from pvtime.sim.runner import run as run_scenario

    started, t0 = now_utc(), time.perf_counter()
    sc = scenario.parse(job.text, job.source, run.overrides)
    result = run_scenario(sc)
    with tempfile.TemporaryDirectory(prefix="pvtime-sweep-") as tmp:
        folder = Path(tmp) / "run"
        write_run(result, sc, folder, force=False, argv=job.argv, started=started, wall_s=time.perf_counter() - t0)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@dataclass
class _Gathered:
    """What the client keeps of each finished run, by its index in the plan."""

    rows: dict[int, list[dict[str, Any]]]  # per vCPU
    failed: dict[int, Outcome[dict[str, bytes]]]


def sweep(name: str, seeds: Sequence[int], axes: Sequence[tuple[Override, ...]], *, workers: int | None,
          scheduler: str | None, connect_timeout_s: float = 30.0, out: Path | None, force: bool, progress: bool,
          quiet: bool, as_json: bool, yes: bool) -> None:
    """`pvtime sweep`'s work; raises ToolError (or click.UsageError: `check_usage`) for what it cannot do."""
    from rich.console import Console

    from pvtime.report.outdir import OutFolderError, check, claim, seal
    from pvtime.report.provenance import now_utc, provenance
    from pvtime.sim import scenario as scenarios
    from pvtime.sim import sweep as sw
    from pvtime.sim.cost import CONFIRM_ABOVE_S, estimate_seconds

    started, t0 = now_utc(), time.perf_counter()
    check_usage(axes, workers, scheduler)
    paths = [a[0].path for a in axes]
    try:
        base = scenarios.load(name)
    except scenarios.ScenarioError as exc:
        raise ToolError(str(exc)) from None
    runs = sw.plan(seeds, axes)
    names = sw.folder_names(runs)
    # Each run is checked here, as its `pvtime run` would check it: one that cannot run is a failed
    # run (the others go on); a sweep none of whose runs can run is an error.
    failed: dict[int, Outcome[dict[str, bytes]]] = {}
    cost = 0.0
    for r in runs:
        try:
            cost = max(cost, estimate_seconds(scenarios.parse(base.text, base.source, r.overrides).spec))
        except scenarios.ScenarioError as exc:
            failed[r.index] = sw.Outcome(r, error=str(exc).replace("\n", "; "))
    if len(failed) == len(runs):
        errors = list(dict.fromkeys(o.error for o in failed.values() if o.error))
        raise ToolError("no run of the sweep can run:\n" + "\n".join(errors[:5])
                        + (f"\n... and {len(errors) - 5} more" if len(errors) > 5 else ""))
    if cost > CONFIRM_ABOVE_S and not yes:
        raise ToolError(f"{base.spec.name}: a run is estimated at {cost / 60:.1f} minutes of wall-clock time: "
                        f"over {CONFIRM_ABOVE_S:g} s, pass --yes to run the sweep")
    folder = out if out is not None else Path("results") / f"{base.spec.name}-sweep"
    try:
        check(folder, force=force)  # before starting a cluster, not after
    except OutFolderError as exc:
        raise ToolError(str(exc)) from None
    # no more local workers than runs to send
    n_workers = min(workers or _usable_cpus(), len(runs) - len(failed))
    try:
        with _cluster(scheduler, n_workers, connect_timeout_s) as client:
            claim(folder, force=force)
            gathered = _run_all(client, name, base, runs, names, failed, folder, progress and not (quiet or as_json))
        aggregates = sw.aggregate(_rows_in_order(gathered), [*paths, "vm"])
        written = _write_tables(folder, name, base, runs, names, paths, gathered, aggregates)
        prov = provenance(base, argv=sys.orig_argv, started=started, wall_s=time.perf_counter() - t0)
        prov["sweep"] = {"scheduler": scheduler or f"LocalCluster of {n_workers} processes", "runs": len(runs),
                         "failed": len(gathered.failed)}
        written.append(_write_json(folder / "provenance.json", prov))
        seal(folder, [*written, "runs"])
    except OutFolderError as exc:
        raise ToolError(str(exc)) from None
    except OSError as exc:
        raise ToolError(f"{folder}: cannot write the results: {exc.strerror or exc}") from None
    fails = [gathered.failed[i] for i in sorted(gathered.failed)]
    message = None if not fails else f"{len(fails)} of {len(runs)} runs failed (listed in {folder / 'sweep.json'})"
    if as_json:
        click.echo(Answer(EXIT_TOOL_ERROR if fails else EXIT_OK, error=message, data={
            "results": str(folder), "runs": len(runs),
            "failed": [{"run": o.run.label, "error": o.error} for o in fails],
            "aggregate": [_aggregate_row(a) for a in aggregates]}).to_json())
    elif not quiet:
        console = Console()
        if not console.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the table
            console = Console(width=160)
        console.print(aggregate_table(base.spec.name, len(runs), len(fails), aggregates, paths))
        console.print(f"results in {folder}/: runs/ ({len(runs) - len(fails)} folders), " + ", ".join(written),
                      highlight=False)
    if fails:
        if as_json:
            sys.exit(EXIT_TOOL_ERROR)
        raise ToolError(message or "")


def _usable_cpus() -> int:
    """The CPUs this process may run on (all of the machine's where the system cannot say)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_usage(axes: Sequence[tuple[Override, ...]], workers: int | None, scheduler: str | None) -> None:
    """The options' combinations that are usage errors (click.UsageError)."""
    paths = [a[0].path for a in axes]
    for path in paths:
        if paths.count(path) > 1:
            raise click.UsageError(f"--set {path}: given twice (list all its values in one --set)")
        if path == "seed":
            raise click.UsageError(f"--set {path}: the seed is swept by --seeds")
    if scheduler is not None and workers is not None:
        raise click.UsageError("--workers starts a local cluster; an existing one (--scheduler) has its own workers")


@contextmanager
def _cluster(scheduler: str | None, workers: int, timeout_s: float) -> Iterator[Client]:
    from pvtime.sim.sweep import connect

    connected = False
    try:
        with connect(scheduler, workers, timeout_s) as client:
            connected = True
            yield client
    except (OSError, TimeoutError) as exc:
        if connected:
            raise
        if scheduler is None:
            raise ToolError(f"cannot start a local dask cluster: {exc}") from None
        raise ToolError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None


def _run_all(client: Client, given: str, base: Scenario, runs: Sequence[SweepRun], names: Sequence[str],
             failed: dict[int, Outcome[dict[str, bytes]]], folder: Path, progress: bool) -> _Gathered:
    """Run every run not `failed` already on `client`'s cluster, with a progress bar; write each
    finished run's folder as it comes, and report each failure on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pvtime.sim.sweep import execute

    err = Console(stderr=True)
    gathered = _Gathered({}, {})

    def report_failure(o: Outcome[dict[str, bytes]]) -> None:
        gathered.failed[o.run.index] = o
        err.print(f"pvtime: run {o.run.label} failed: {o.error}", highlight=False, markup=False)

    for o in failed.values():
        report_failure(o)
    job = RunJob(base.text, base.source, tuple(sys.orig_argv))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), console=err,
                  disable=not progress or not err.is_terminal, transient=True) as bar:
        tracked = bar.add_task(f"{base.spec.name} sweep", total=len(runs), completed=len(failed),
                               failed=_failed_text(len(failed)))

        def done(o: Outcome[dict[str, bytes]]) -> None:
            if o.error is not None or o.value is None:
                report_failure(o)
            else:
                _keep(o.run, names[o.run.index], o.value, folder, gathered)
            bar.update(tracked, advance=1, failed=_failed_text(len(gathered.failed)))

        execute(client, [r for r in runs if r.index not in failed], functools.partial(run_files, job), done)
    return gathered


def _failed_text(n: int) -> str:
    return f"[red]{n} failed[/red]" if n else ""


def _keep(run: SweepRun, name: str, files: dict[str, bytes], folder: Path, gathered: _Gathered) -> None:
    """Write a finished run's folder and keep its per-vCPU rows."""
    target = folder / "runs" / name
    target.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (target / file).write_bytes(data)
    vcpus = json.loads(files["summary.json"])["vcpus"]
    gathered.rows[run.index] = [{**run.params, "run": name, **v, "host_steal_pct": host_steal_pct(v)} for v in vcpus]


def host_steal_pct(vcpu: dict[str, Any]) -> float | None:
    """The host's truth (run_delay) as a share of the vCPU's elapsed time, in %."""
    elapsed = vcpu.get("elapsed_ns") or 0
    return None if elapsed <= 0 else 100.0 * vcpu["host_run_delay_ns"] / elapsed


def _rows_in_order(gathered: _Gathered) -> list[dict[str, Any]]:
    return [row for i in sorted(gathered.rows) for row in gathered.rows[i]]


def _write_tables(folder: Path, given: str, base: Scenario, runs: Sequence[SweepRun], names: Sequence[str],
                  paths: Sequence[str], gathered: _Gathered, aggregates: Sequence[Aggregate]) -> list[str]:
    """vcpus.parquet, aggregate.csv and .parquet, sweep.json: the same for the same sweep."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pvtime.sim.sweep import METRICS

    rows = _rows_in_order(gathered)
    axis_types = {p: _axis_type([r.params[p] for r in runs]) for p in paths}
    columns = [*paths, "seed", "run", *(k for k in (rows[0] if rows else {}) if k not in {*paths, "seed", "run"})]
    types = {c: axis_types.get(c) or _column_type(c) for c in columns}
    pq.write_table(pa.table({c: pa.array([_cell(r.get(c), types[c]) for r in rows], type=types[c])
                             for c in columns}), folder / "vcpus.parquet")
    agg = [_aggregate_row(a) for a in aggregates]
    agg_columns = [*paths, "vm", "metric", "n", "mean", "std", "ci95_low", "ci95_high"]
    agg_types = {**axis_types, "vm": pa.string(), "metric": pa.string(), "n": pa.int64(),
                 **{c: pa.float64() for c in ("mean", "std", "ci95_low", "ci95_high")}}
    pq.write_table(pa.table({c: pa.array([_cell(r[c], agg_types[c]) for r in agg], type=agg_types[c])
                             for c in agg_columns}), folder / "aggregate.parquet")
    _write_csv(folder / "aggregate.csv", agg_columns, agg)

    def status(r: SweepRun) -> dict[str, Any]:
        o = gathered.failed.get(r.index)
        if o is None:
            return {"status": "done"}
        return {"status": "failed", "error": o.error, **({"traceback": o.detail} if o.detail else {})}

    _write_json(folder / "sweep.json", {
        "scenario": base.spec.name, "source": base.source,
        "axes": {p: [o.text for o in axis] for p, axis in zip(paths, _axes(runs, len(paths)))},
        "seeds": list(dict.fromkeys(r.seed for r in runs)),
        "level": 0.95, "metrics": [{"name": m.name, "column": m.column, "label": m.label} for m in METRICS],
        "failed": len(gathered.failed),
        "runs": [{"run": names[r.index], "seed": r.seed, "settings": {o.path: o.value for o in r.settings},
                  "pvtime_run": r.pvtime_run(given), **status(r)} for r in runs],
    })
    return ["vcpus.parquet", "aggregate.parquet", "aggregate.csv", "sweep.json"]


def _axes(runs: Sequence[SweepRun], n: int) -> list[list[Override]]:
    """Each axis's values, in the order the plan took them."""
    out: list[list[Override]] = [[] for _ in range(n)]
    for r in runs:
        for i, o in enumerate(r.settings):
            if o not in out[i]:
                out[i].append(o)
    return out


def _axis_type(values: Sequence[Any]) -> Any:
    """The column type of a swept path: its values' own type when they share one, else their text."""
    import pyarrow as pa

    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()


def _column_type(column: str) -> Any:
    import pyarrow as pa

    if column in _STRINGS or column == "run":
        return pa.string()
    if column in _FLOATS:
        return pa.float64()
    if column in _BOOLS:
        return pa.bool_()
    return pa.int64()


def _cell(value: Any, kind: Any) -> Any:
    import pyarrow as pa

    if value is None:
        return None
    if kind == pa.string() and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    if kind == pa.float64():
        return float(value)
    return value


def _aggregate_row(a: Aggregate) -> dict[str, Any]:
    i = a.interval
    return {**dict(a.group), "metric": a.metric.name, "n": i.n, "mean": i.mean, "std": i.std,
            "ci95_low": i.low, "ci95_high": i.high}


def aggregate_table(scenario: str, runs: int, failed: int, aggregates: Sequence[Aggregate],
                    paths: Sequence[str]) -> Table:
    """The aggregate as a person reads it: a row per setting and VM, a column per metric."""
    from rich.table import Table

    from pvtime.sim.sweep import METRICS

    caption = f"{runs} runs" + (f", {failed} failed" if failed else "") + \
        "; mean ± half-width of the Student-t 95 % interval over the seeds (n runs); per run, the mean of the VM's vCPUs"
    table = Table(title=f"sweep of {scenario}", caption=caption)
    for p in paths:
        table.add_column(p)
    table.add_column("VM")
    table.add_column("n", justify="right")
    for m in METRICS:
        table.add_column(m.label, justify="right")
    groups: dict[tuple[Any, ...], dict[str, Aggregate]] = {}
    for a in aggregates:
        groups.setdefault(tuple(v for _, v in a.group), {})[a.metric.name] = a
    for group, by_metric in groups.items():
        n = max(a.interval.n for a in by_metric.values())
        table.add_row(*(_shown(v) for v in group), str(n),
                      *(_cell_text(by_metric[m.name]) for m in METRICS))
    return table


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cell_text(a: Aggregate) -> str:
    i = a.interval
    if i.mean is None:
        return "-"
    digits = 1 if a.metric.name == "timeslices" else 2
    text = f"{i.mean:.{digits}f}"
    return text if i.half_width is None else f"{text} ± {i.half_width:.{digits}f}"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerows([_csv_cell(r[c]) for c in columns] for r in rows)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else _shown(value)


def _write_json(path: Path, doc: Any) -> str:
    with path.open("w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True, indent=2)
        f.write("\n")
    return path.name
