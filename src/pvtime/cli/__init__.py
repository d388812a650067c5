"""The `pvtime` command.

Exit statuses and the --json answer: `pvtime.cli.exits`; the option types (integers written as
25e6 or 25_000_000, HOST:PORT, guest images): `pvtime.cli.params`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pvtime.abi.linux import CONSOLE_BOOTARGS
from pvtime.cli.exits import (
    EPILOG, EXIT_DIFFERENT, EXIT_OK, EXIT_TIME_LIMIT, EXIT_VM_FAILED, Answer, ToolError, fail_json,
)
from pvtime.cli.params import GuestImage, HostPort, Integer, Seeds, Setting
from pvtime.cli.runfolder import write_run
from pvtime.report.quiet import no_library_warnings as _no_library_warnings

if TYPE_CHECKING:
    from pvtime.calibrate.workloads import Workload
    from pvtime.sim.overrides import Override

U32 = 0xFFFF_FFFF


def _internal_error() -> ToolError:
    """A bug: its traceback on stderr, and a tool error (125), never a status a guest could give."""
    traceback.print_exc()
    return ToolError("internal error (the traceback above): please report it")


class _Pvtime(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception:
            raise _internal_error() from None


@contextmanager
def _answering(as_json: bool) -> Iterator[None]:
    """With --json, an error is the JSON answer on stdout too (exit_code and error)."""
    try:
        yield
    except click.ClickException as err:
        if as_json:
            fail_json(err)
        raise
    except (click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
        raise
    except Exception:
        bug = _internal_error()
        if as_json:
            fail_json(bug)
        raise bug from None


@click.group(cls=_Pvtime, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pvtime", help="print pvtime's version and exit")
def main() -> None:
    """Arm paravirtualized time: stolen time and Live Physical Time, host to guest."""


@main.command()
@click.argument("scenario", required=False)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="results folder  [default: ./results/<scenario name>/]; an earlier results folder there is "
                   "replaced whole, any other non-empty folder is refused")
@click.option("--force", is_flag=True,
              help="replace a results folder even when it also holds files pvtime did not write (deleting "
                   "them); a folder that is not a pvtime results folder is never cleared")
@click.option("--seed", type=Integer(), default=None, help="override the scenario's seed (as --set seed=N)")
@click.option("--duration", "duration_ms", type=Integer(1), default=None,
              help="override the scenario's duration (virtual ms); a migration after the new end does not "
                   "happen (a note says so)")
@click.option("--set", "settings", type=Setting(), multiple=True, metavar="PATH=VALUE",
              help="set a scenario field (repeatable): vm.web.vcpus=4, host.host0.sched.policy=cfs, "
                   "noise.neighbour.duty=0.8, migration.0.at_ms=500; an array's element by its name or index; "
                   "the value is TOML or a bare word; checked as the file is, errors name the --set")
@click.option("--no-progress", is_flag=True, help="do not show the progress bar")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors (no progress, tables or notes)")
@click.option("--json", "as_json", is_flag=True,
              help="print the answer as JSON on stdout instead of the tables: exit_code, error, the results "
                   "folder and the summary (summary.json)")
@click.option("--yes", is_flag=True, help="run even if the estimated cost is over a minute")
def run(scenario: str | None, out: Path | None, force: bool, seed: int | None, duration_ms: int | None,
        settings: tuple[Override, ...], no_progress: bool, quiet: bool, as_json: bool, yes: bool) -> None:
    """Run SCENARIO (a TOML file or an embedded name; default: the embedded `default`).

    Writes the results folder (tables, series, figures, trace, summary.json, and provenance.json:
    versions, the scenario as run, the command line, wall time). A run estimated at over a minute
    (`pvtime.sim.cost`: vCPUs x simulated time, and host CPUs x sample intervals) prints the
    estimate and needs --yes. Exits 0 once the results are written: each guest's exit status is
    in the table and summary.json.
    """
    with _answering(as_json):
        overrides = _run_overrides(seed, duration_ms, settings)
        _run(scenario, out, force, overrides, no_progress or quiet or as_json, quiet, as_json, yes)


def _run_overrides(seed: int | None, duration_ms: int | None, settings: tuple[Override, ...]) -> list[Override]:
    """`pvtime run`'s overrides in the order they apply: --seed, --duration, then each --set."""
    from pvtime.sim.overrides import Override

    given = [Override.of(path, v, f"{option} {v}")
             for path, option, v in (("seed", "--seed", seed), ("duration_ms", "--duration", duration_ms))
             if v is not None]
    return given + list(settings)


def _run(name: str | None, out: Path | None, force: bool, overrides: list[Override],
         no_progress: bool, quiet: bool, as_json: bool, yes: bool) -> None:
    import time

    with _no_library_warnings():  # importing matplotlib may announce that it builds its font cache
        from pvtime.report import migration_table, summary_table
        from pvtime.report.files import summary
    from pvtime.report.figure_process import FigureProcess, can_fork
    from pvtime.report.outdir import OutFolderError, check
    from pvtime.report.provenance import now_utc
    from pvtime.sim import scenario as scenarios
    from pvtime.sim.cost import CONFIRM_ABOVE_S, estimate_seconds
    from pvtime.sim.runner import run as run_scenario

    started, t0 = now_utc(), time.perf_counter()
    console = Console()
    if not console.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the tables
        console = Console(width=120)
    err = Console(stderr=True)

    def note(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    try:
        sc = scenarios.load(name, overrides)
    except scenarios.ScenarioError as exc:
        raise ToolError(str(exc)) from None
    end = next((o.origin for o in overrides if o.parts == ("duration_ms",)), None)
    for i in [] if end is None else scenarios.late_migrations(sc.spec):
        m = sc.spec.migration[i]
        note(f"pvtime: {end} ends the run before migration[{i}] ({m.vm} to {m.to} "
             f"at {m.at_ms} ms): it will not happen")
    folder = out if out is not None else Path("results") / sc.spec.name
    try:
        check(folder, force=force)  # before minutes of running, not after
    except OutFolderError as exc:
        raise ToolError(str(exc)) from None
    cost_s = estimate_seconds(sc.spec)
    if cost_s > CONFIRM_ABOVE_S:
        estimate = (f"{sc.spec.name}: estimated {cost_s / 60:.1f} minutes of wall-clock time "
                    f"({sum(h.cpus for h in sc.spec.host)} host CPUs, {sc.spec.duration_ms} ms simulated)")
        if not yes:
            raise ToolError(f"{estimate}: over {CONFIRM_ABOVE_S:g} s, pass --yes to run it")
        note(f"pvtime: {estimate}")
    with FigureProcess() if can_fork() else nullcontext() as figures:  # matplotlib's import overlaps the run
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.fields[virtual]}"), TimeElapsedColumn(), console=err,
                      disable=no_progress or not err.is_terminal, transient=True) as bar:
            job = bar.add_task(f"{sc.spec.name}", total=sc.spec.duration_ms, virtual="")

            def progress(now_ns: int, total_ns: int) -> None:
                bar.update(job, completed=now_ns / 1e6, virtual=f"{now_ns / 1e9:.2f}/{total_ns / 1e9:.2f} s virtual")

            result = run_scenario(sc, progress)
        if not (quiet or as_json):
            console.print(summary_table(result, console.width))
            if result.migrations:
                console.print(migration_table(result))
            for vm in result.vms:
                if vm.stopped is not None:
                    at = "" if vm.stopped_ns is None else f" at {vm.stopped_ns / 1e6:.1f} ms"
                    # A guest that exits with status 0 (semihosting) has finished its job: not a failure.
                    style = "green" if vm.exit_status == 0 else "red"
                    console.print(f"[{style}]{vm.name} stopped{at}:[/{style}] {vm.stopped}", markup=True, highlight=False)
        try:
            paths = write_run(result, sc, folder, force=force, argv=sys.orig_argv, started=started,
                              wall_s=time.perf_counter() - t0, figures=figures)
        except OutFolderError as exc:
            raise ToolError(str(exc)) from None
        except OSError as exc:
            raise ToolError(f"{folder}: cannot write the results: {exc.strerror or exc}") from None
    if as_json:
        click.echo(Answer(EXIT_OK, data={"results": str(folder), "files": [p.name for p in paths],
                                         "summary": summary(result)}).to_json())
    elif not quiet:
        console.print(f"results in {folder}/: " + ", ".join(p.name for p in paths), highlight=False)


@main.command("sweep")
@click.argument("scenario", required=False)
@click.option("--seeds", type=Seeds(), required=True,
              help="the seeds, e.g. 1-32, 1,5,9 or 1-4,10: each setting runs once with each seed")
@click.option("--set", "axes", type=Setting(many=True), multiple=True, metavar="PATH=V1,V2,...",
              help="sweep a scenario field over these values (repeatable: every combination runs), as pvtime "
                   "run's --set: vm.web.vcpus=2,4,8, host.host0.sched.policy=eevdf,cfs; commas inside [...], "
                   "{...} or quotes belong to one value")
@click.option("--workers", type=Integer(1, 4096), default=None,
              help="worker processes of the local cluster (one thread each)  [default: this machine's CPUs]")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="run on an existing dask cluster, by its scheduler's address (tcp://HOST:8786) instead of a "
                   "local one; its workers need this pvtime installed")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="wall-clock seconds to wait for the --scheduler to answer")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="results folder  [default: ./results/<scenario name>-sweep/]; an earlier results folder there "
                   "is replaced whole, any other non-empty folder is refused")
@click.option("--force", is_flag=True,
              help="replace a results folder even when it also holds files pvtime did not write (deleting them)")
@click.option("--no-progress", is_flag=True, help="do not show the progress bar")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors (no progress, table or notes)")
@click.option("--json", "as_json", is_flag=True,
              help="print the answer as JSON on stdout instead of the table: exit_code, error, the results "
                   "folder, the failed runs and the aggregate")
@click.option("--yes", is_flag=True, help="run even if a run's estimated cost is over a minute")
def sweep_cmd(scenario: str | None, seeds: tuple[int, ...], axes: tuple[tuple[Override, ...], ...],
              workers: int | None, scheduler: str | None, connect_timeout: float, out: Path | None, force: bool,
              no_progress: bool, quiet: bool, as_json: bool, yes: bool) -> None:
    """Run SCENARIO (a TOML file or an embedded name; default: `default`) once per seed and
    combination of --set values, each as `pvtime run SCENARIO --seed K --set ...` would, on
    dask.distributed: a local cluster of worker processes, or an existing cluster (--scheduler).

    Writes a results folder per run (runs/), vcpus.parquet (a row per run and vCPU: the swept
    values, the seed and summary.json's figures), the aggregate over seeds per setting and VM
    (mean and Student-t 95 % interval, with n; printed, and in aggregate.csv and .parquet),
    sweep.json (each run's status) and provenance.json. A run that fails is reported with its
    values and its `pvtime run` options, and the others go on; the exit status is then 125.
    """
    from pvtime.cli.sweep import check_usage, sweep

    check_usage(axes, workers, scheduler)  # a usage error is on stderr only, as click's own
    with _answering(as_json):
        sweep(scenario or "default", seeds, axes, workers=workers, scheduler=scheduler,
              connect_timeout_s=connect_timeout, out=out, force=force, progress=not no_progress, quiet=quiet,
              as_json=as_json, yes=yes)


@main.command("scenarios")
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON on stdout")
def scenarios_cmd(as_json: bool) -> None:
    """List the embedded scenarios."""
    import json

    from pvtime.sim import scenario as scenarios

    specs = [scenarios.load(name).spec for name in scenarios.embedded_names()]
    if as_json:
        click.echo(json.dumps([{"name": s.name, "duration_ms": s.duration_ms, "description": s.description,
                                "hosts": [{"name": h.name, "cpus": h.cpus} for h in s.host],
                                "vms": len(s.vm), "vcpus": sum(v.vcpus for v in s.vm)} for s in specs]))
        return
    table = Table(title="embedded scenarios (pvtime run NAME)", caption_justify="left",
                  caption="pvtime scenario show NAME: the file, with what to look for in its results")
    for col in ("name", "duration", "hosts", "VMs / vCPUs", "description"):
        table.add_column(col, no_wrap=col == "name")
    for spec in specs:
        table.add_row(spec.name, f"{spec.duration_ms} ms", ", ".join(f"{h.name} ({h.cpus} CPUs)" for h in spec.host),
                      f"{len(spec.vm)} / {sum(v.vcpus for v in spec.vm)}", spec.description)
    console = Console()
    if not console.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the table
        console = Console(width=120)
    console.print(table)


@main.group("scenario")
def scenario_group() -> None:
    """The scenario file format: its JSON Schema, its reference page, the embedded files.

    (`pvtime scenarios` lists the embedded scenarios.)
    """


@scenario_group.command("schema")
def scenario_schema_cmd() -> None:
    """Print the scenario file's JSON Schema (draft 2020-12) on stdout."""
    from pvtime.report.scenario_docs import scenario_json_schema_text

    click.echo(scenario_json_schema_text(), nl=False)


@scenario_group.command("docs")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the Markdown to this file (the repository's docs/scenarios.md)  [default: stdout]")
def scenario_docs_cmd(out: Path | None) -> None:
    """Print the scenario file's reference (Markdown): every table and field with its type,
    default, range and description, generated from the schema."""
    from pvtime.report.scenario_docs import scenario_markdown

    text = scenario_markdown()
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        with out.open("w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as exc:
        raise ToolError(f"{out}: {exc.strerror or exc}") from None


@scenario_group.command("show")
@click.argument("name")
def scenario_show_cmd(name: str) -> None:
    """Print the embedded scenario NAME's file (to start your own from: `> mine.toml`)."""
    from pvtime.sim import scenario as scenarios

    if name not in scenarios.embedded_names():
        raise ToolError(f"{name}: not an embedded scenario (embedded: {', '.join(scenarios.embedded_names())})")
    click.echo(scenarios.embedded_text(name), nl=False)


@main.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--tolerance", "relative", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="relative tolerance, a fraction of RUN_A's value (0.05: 5 %)")
@click.option("--tolerance-ns", "absolute_ns", type=Integer(0), default=0, show_default=True,
              help="absolute tolerance in ns (e.g. 1e6: a millisecond)")
@click.option("--json", "as_json", is_flag=True,
              help="print the comparison as JSON on stdout instead of the table: exit_code, error, both runs, "
                   "and per vCPU each view's values, difference and verdict")
def compare_cmd(run_a: Path, run_b: Path, relative: float, absolute_ns: int, as_json: bool) -> None:
    """Compare two results folders (`pvtime run --out`), RUN_A the reference: per vCPU, the host's
    truth, the stolen-time record and the guest's steal of both runs, with B - A in ms and
    relative to A.

    A difference is beyond the tolerance when |B - A| exceeds both --tolerance x |A| and
    --tolerance-ns (by default any difference is); a value one run has and the other lacks, or a
    vCPU in one run only, always is. Exits 0 when no difference is beyond it, 1 when one is, 125
    when a folder is not a results folder or the two are of different results schemas
    (summary.json's schema_version).
    """
    with _answering(as_json):
        from pvtime.report.compare import ResultsError, Tolerance, compare, comparison_table, load_results

        try:
            result = compare(load_results(run_a), load_results(run_b), Tolerance(relative, absolute_ns))
        except ResultsError as exc:
            raise ToolError(str(exc)) from None
        code = EXIT_DIFFERENT if result.exceeding else EXIT_OK
        if as_json:
            click.echo(Answer(code, data=result.to_dict()).to_json())
        else:
            console = Console()
            if not console.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the table
                console = Console(width=160)
            console.print(comparison_table(result))
    sys.exit(code)


@main.command("lpt")
@click.option("--native", "native_hz", type=Integer(1, U32), required=True,
              help="the host counter frequency (Hz), e.g. 25e6")
@click.option("--pv", "pv_hz", type=Integer(1, U32), required=True,
              help="the PV frequency the guest sees (Hz), e.g. 1e9")
@click.option("--json", "as_json", is_flag=True, help="print the record and bounds as JSON on stdout")
def lpt_cmd(native_hz: int, pv_hz: int, as_json: bool) -> None:
    """The LPT record for a host of --native Hz presenting --pv Hz: fields, error bounds, overflow."""
    import json

    from pvtime.fixedpoint import describe

    try:
        d = describe(native_hz, pv_hz)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if as_json:
        click.echo(json.dumps(d, sort_keys=True))
        return
    table = Table(title=f"LPT: native {native_hz:,} Hz -> PV {pv_hz:,} Hz")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("native_freq", "pv_freq", "scale_mult", "fracbits", "rscale_mult", "rfracbits"):
        table.add_row(f"record.{key}", f"{d[key]} ({d[key]:#x})" if "mult" in key else str(d[key]))
    table.add_row("native -> PV error bound", f"{d['native_to_pv_error_pv_ticks']} PV tick(s)")
    table.add_row("PV -> native error bound", f"{d['pv_to_native_error_native_ticks']} native tick(s)")
    table.add_row("RFC reverse conversion early by", f"up to {d['rfc_reverse_early_native_ticks']} native tick(s) "
                  "(pvtime's deadline conversion: never early)")
    years = d["pv_wrap_years"]
    table.add_row("PV counter overflows after",
                  "never before the native counter" if years is None
                  else f"{d['pv_wrap_seconds']:.4g} s ({years:.4g} years) from native 0")
    table.add_row("native counter wraps after", f"{d['native_wrap_seconds']:.4g} s ({d['native_wrap_years']:.4g} years)")
    Console().print(table)


@main.group("migrate")
def migrate_group() -> None:
    """Migrate a VM between two pvtime processes over a socket."""


@migrate_group.command("listen")
@click.option("--port", type=Integer(0, 65535), default=0, show_default=True,
              help="the TCP port on 127.0.0.1 (0: any free port, announced on stderr)")
@click.option("--native", "native_hz", type=Integer(1, U32), default=1_000_000_000, show_default=True,
              help="this (destination) host's counter frequency (Hz)")
@click.option("--run-ms", type=Integer(0), default=10, show_default=True,
              help="virtual ms to run the VM after the restore")
# The time-outs' defaults are migration_net's ACCEPT_TIMEOUT_S and TIMEOUT_S (a test keeps them equal;
# importing pvtime.vmm here would slow every command's start).
@click.option("--accept-timeout", type=click.FloatRange(0, min_open=True), default=120.0,
              show_default=True, help="wall-clock seconds to wait for a sender to connect")
@click.option("--read-timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="wall-clock seconds each read waits for the sender before the migration is refused")
@click.option("--allow-frequency-change", is_flag=True,
              help="accept a VM without LPT from a host whose counter runs at another frequency (its "
                   "clock then runs at the wrong rate here; refused otherwise)")
def migrate_listen(port: int, native_hz: int, run_ms: int, accept_timeout: float, read_timeout: float,
                   allow_frequency_change: bool) -> None:
    """Receive one VM on 127.0.0.1:PORT, run it, print a JSON summary."""
    import json

    from pvtime.sim.migration import MigrationError, listen_vm

    try:
        result = listen_vm(port, native_hz=native_hz, run_ms=run_ms,
                           announce=lambda p: click.echo(f"listening on 127.0.0.1:{p}", err=True),
                           accept_timeout=accept_timeout, timeout=read_timeout,
                           allow_frequency_change=allow_frequency_change)
    except MigrationError as err:
        raise ToolError(f"migration refused: {err}") from None
    except OSError as err:  # the port is taken, or the like: before any stream
        raise ToolError(f"cannot listen on 127.0.0.1:{port}: {err.strerror or err}") from None
    click.echo(json.dumps(result, sort_keys=True))


@migrate_group.command("send")
@click.option("--to", "to", type=HostPort(), required=True,
              help="HOST:PORT of a `pvtime migrate listen` ([::1]:PORT for an IPv6 address)")
@click.option("--native", "native_hz", type=Integer(1, U32), default=25_000_000, show_default=True,
              help="this (source) host's counter frequency (Hz)")
@click.option("--pv", "pv_hz", type=Integer(0, U32), default=1_000_000_000, show_default=True,
              help="LPT frequency (0: no LPT)")
@click.option("--run-ms", type=Integer(0), default=10, show_default=True,
              help="virtual ms to run the VM before migrating it")
@click.option("--image", type=GuestImage(), default=None,
              help="migrate this AArch64 ELF (a path, or a packaged image name such as minikernel) "
                   "instead of the clock-watching model VM")
@click.option("--vcpus", type=Integer(1, 64), default=1, show_default=True, help="vCPUs of the --image VM")
def migrate_send(to: tuple[str, int], native_hz: int, pv_hz: int, run_ms: int, image: Path | None,
                 vcpus: int) -> None:
    """Run a VM (a small clock-watching one, or --image), migrate it to --to, print a JSON summary."""
    import json

    from pvtime.sim.migration import MigrationError, send_vm
    from pvtime.vmm.elf import ElfError

    host, port = to
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        data = None if image is None else image.read_bytes()
        result = send_vm((host, port), native_hz=native_hz, pv_hz=pv_hz or None, run_ms=run_ms,
                         image=data, vcpus=vcpus)
    except ElfError as err:
        raise ToolError(str(err)) from None
    except MigrationError as err:
        raise ToolError(f"not migrated: {err}") from None
    except UnicodeError:  # the IDNA codec refuses the host name before any socket call
        raise ToolError(f"cannot reach {where}: {host!r} is not a host name") from None
    except OSError as err:  # refused, unreachable, unknown host, reset, timed out: before or after connecting
        raise ToolError(f"cannot reach {where}: {err.strerror or err}") from None
    click.echo(json.dumps(result, sort_keys=True))
    if not result["accepted"]:
        raise ToolError(f"the destination refused the VM: {result['message']} (the VM kept running)")


@main.group("guest")
def guest_group() -> None:
    """Run AArch64 guest programs (freestanding ELF images) under the hypervisor."""


@guest_group.command("run")
@click.argument("image", type=GuestImage())
@click.option("--vcpus", type=Integer(1, 64), default=1, show_default=True, help="the VM's vCPUs")
@click.option("--host-cpus", type=Integer(1, 256), default=1, show_default=True,
              help="host CPUs; fewer than --vcpus makes the vCPU threads wait (steal)")
@click.option("--memory", "memory_mib", type=Integer(1, 4096), default=64, show_default=True,
              help="guest RAM in MiB, at 0x40000000")
@click.option("--counter-hz", type=Integer(1, U32), default=62_500_000, show_default=True,
              help="generic-timer frequency (CNTFRQ_EL0)")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help=f"virtual seconds before the run is abandoned (exit {EXIT_TIME_LIMIT})")
@click.option("--mips", type=Integer(1, 100_000), default=1000, show_default=True,
              help="guest speed: millions of instructions per virtual second")
@click.option("--lpt-pv-hz", type=Integer(1, U32), default=None,
              help="configure Live Physical Time: the PV counter frequency the guest sees")
@click.option("--stats", is_flag=True, help="print per-vCPU instructions and steal to stderr at the end")
@click.option("--json", "as_json", is_flag=True,
              help="print the answer as JSON on stdout (exit_code, guest_exit_status, error, stopped, the "
                   "console, per-vCPU figures) instead of the console")
def guest_run(image: Path, vcpus: int, host_cpus: int, memory_mib: int, counter_hz: int,
              time_limit_s: float, mips: int, lpt_pv_hz: int | None, stats: bool, as_json: bool) -> None:
    """Run IMAGE (a freestanding AArch64 ELF for QEMU virt, or a packaged image name such as
    minikernel) with its console on stdout.

    vCPU 0 starts at the ELF entry (EL1h, MMU off); the others wait for PSCI CPU_ON. The exit
    status is the guest's semihosting exit status; 124 when --time-limit passes first; 126 when
    the VM stops without a status (a guest fault: the reason goes to stderr); 125 when pvtime
    cannot run it (an image it cannot load).
    """
    with _answering(as_json):
        _guest_run(image, vcpus, host_cpus, memory_mib, counter_hz, time_limit_s, mips, lpt_pv_hz, stats,
                   as_json)


def _guest_run(image: Path, vcpus: int, host_cpus: int, memory_mib: int, counter_hz: int,
               time_limit_s: float, mips: int, lpt_pv_hz: int | None, stats: bool, as_json: bool) -> None:
    from pvtime.sim.guest_run import GuestRunOptions, run_guest
    from pvtime.vmm.elf import ElfError

    out = sys.stdout.buffer

    def console(data: bytes) -> None:
        out.write(data)
        out.flush()

    options = GuestRunOptions(vcpus=vcpus, host_cpus=host_cpus, memory_mib=memory_mib, counter_hz=counter_hz,
                              time_limit_ns=int(time_limit_s * 1e9), instructions_per_sec=mips * 1_000_000,
                              lpt_pv_hz=lpt_pv_hz)
    try:
        result = run_guest(image, options, console=None if as_json else console)
    except (ElfError, ValueError) as err:
        raise ToolError(str(err)) from None
    except OSError as err:
        raise ToolError(f"{image}: cannot read the image: {err.strerror or err}") from None
    if stats:
        for v in result.vcpus:
            click.echo(f"vcpu{v.vcpu}: {v.instructions} instructions, run_delay {v.run_delay_ns} ns, "
                       f"record steal {v.record_steal_ns} ns", err=True)
    if result.exit_status is not None:
        code = result.exit_status  # 0..255: the VMM keeps its low byte, as QEMU's semihosting does
    elif result.stopped is None:
        click.echo(f"pvtime: {image}: time limit of {time_limit_s:g} virtual s reached", err=True)
        code = EXIT_TIME_LIMIT
    elif result.stopped.is_power_off:
        click.echo(f"pvtime: {image}: the guest powered off (PSCI SYSTEM_OFF) without an exit status", err=True)
        code = EXIT_OK
    else:
        click.echo(f"pvtime: {image}: VM stopped: {result.stopped}", err=True)
        code = EXIT_VM_FAILED
    if as_json:
        click.echo(Answer(code, guest_exit_status=result.exit_status, data={
            "image": str(image), "stopped": None if result.stopped is None else str(result.stopped),
            "time_limit_reached": result.stopped is None, "virtual_ns": result.virtual_ns,
            "console": result.console.decode("utf-8", "replace"),
            "vcpus": [{"vcpu": v.vcpu, "instructions": v.instructions, "run_delay_ns": v.run_delay_ns,
                       "record_steal_ns": v.record_steal_ns} for v in result.vcpus]}).to_json())
    sys.exit(code)


@main.group("linux")
def linux_group() -> None:
    """Boot a Linux arm64 kernel under the hypervisor (the packaged one, or your own)."""


@linux_group.command("run")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="an arm64 Image (raw or gzipped)  [default: the packaged Linux 6.1 kernel]")
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a newc cpio initramfs, gzipped or not  [default: the packaged one, whose /init keeps every "
                   "CPU busy for pvtime.busy_ms and prints /proc/stat before and after]")
@click.option("--append", "append", default="", help=f"kernel command line, after {CONSOLE_BOOTARGS!r}")
@click.option("--vcpus", type=Integer(1, 8), default=1, show_default=True,
              help="the VM's vCPUs (a GICv2 serves at most 8)")
@click.option("--host-cpus", type=Integer(1, 256), default=1, show_default=True,
              help="host CPUs; fewer than --vcpus makes the vCPU threads wait (steal)")
@click.option("--memory", "memory_mib", type=Integer(16, 4096), default=128, show_default=True,
              help="guest RAM in MiB, at 0x40000000")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="virtual seconds before the run is abandoned (exit 124)")
@click.option("--mips", type=Integer(1, 100_000), default=1000, show_default=True,
              help="guest speed: millions of instructions per virtual second")
@click.option("--stats", is_flag=True,
              help="print per vCPU the host's truth (run_delay since PV_TIME_ST) and the record to stderr")
def linux_run(kernel: Path | None, initrd: Path | None, append: str, vcpus: int, host_cpus: int,
              memory_mib: int, time_limit_s: float, mips: int, stats: bool) -> None:
    """Boot Linux with its console on stdout; exit 0 when it powers off (PSCI SYSTEM_OFF).

    The machine is QEMU virt's layout with a vGICv2, PSCI over HVC and PV time; the VMM passes a
    device tree in x0 as the arm64 boot protocol says. 124 when --time-limit passes first; 126
    when the VM stops otherwise (the reason goes to stderr); 125 when pvtime cannot boot it.
    """
    from pvtime.sim.guest_run import GuestRunOptions, run_guest
    from pvtime.vmm.arm64_image import ImageError
    from pvtime.vmm.images import linux_image
    from pvtime.vmm.linux_boot import LinuxBoot

    out = sys.stdout.buffer

    def console(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        boot = LinuxBoot.from_files(kernel or linux_image("Image.gz"), initrd or linux_image("initramfs.cpio.gz"),
                                    f"{CONSOLE_BOOTARGS} {append}".strip())
        options = GuestRunOptions(vcpus=vcpus, host_cpus=host_cpus, memory_mib=memory_mib,
                                  time_limit_ns=int(time_limit_s * 1e9), instructions_per_sec=mips * 1_000_000)
        result = run_guest(boot, options, console=console)
    except (ImageError, ValueError) as err:
        raise ToolError(str(err)) from None
    if stats:
        for v in result.vcpus:
            truth = "-" if v.host_steal_ns is None else f"{v.host_steal_ns} ns"
            click.echo(f"vcpu{v.vcpu}: {v.instructions} instructions, host run_delay since PV_TIME_ST {truth}, "
                       f"record steal {v.record_steal_ns} ns", err=True)
    if result.stopped is not None and result.stopped.is_power_off:
        sys.exit(EXIT_OK)
    if result.stopped is None:
        click.echo(f"pvtime: time limit of {time_limit_s:g} virtual s reached", err=True)
        sys.exit(EXIT_TIME_LIMIT)
    click.echo(f"pvtime: VM stopped: {result.stopped}", err=True)
    for error in result.errors:
        click.echo(f"pvtime: {error}", err=True)
    sys.exit(EXIT_VM_FAILED)


def _calibrate_workloads(names: tuple[str, ...] = ()) -> tuple[Workload, ...]:
    """The built-in calibration workloads called `names` (all when empty); KeyError for others."""
    from pvtime.calibrate.workloads import by_name

    return by_name(names)


def _sched_choices(name: str) -> list[str]:
    """The values `pvtime.host.sched_config` accepts for policy, HZ or preempt, as option choices."""
    from pvtime.host import sched_config

    return [str(v) for v in getattr(sched_config, name)]


@main.command("calibrate")
@click.option("--runs", type=Integer(1), default=None,
              help="repetitions of each workload on the kernel, interleaved  [default: 5]")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="measurement window of each run  [default: 3]")
@click.option("--workload", "workloads", multiple=True, metavar="NAME",
              help="run only this workload (repeatable)  [default: all; names: "
                   + ", ".join(w.name for w in _calibrate_workloads()) + "]")
@click.option("--policy", type=click.Choice(_sched_choices("POLICIES")), default=None,
              help="simulate this fair policy  [default: the kernel's (EEVDF from Linux 6.6)]")
@click.option("--hz", type=click.Choice(_sched_choices("HZ_VALUES")), default=None,
              help="simulate this HZ  [default: CONFIG_HZ]")
@click.option("--preempt", type=click.Choice(_sched_choices("PREEMPT_MODES")), default=None,
              help="simulate this preemption mode  [default: the kernel's]")
@click.option("--release", default=None, help="the kernel release to report (and choose the policy by)")
@click.option("--cpus", "host_cpus", type=Integer(1, 256), default=None,
              help="CPUs of the simulated host  [default: this machine's, or the recorded one's]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the kernel measurement and the comparison here (JSON)")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="compare a recorded kernel measurement (a --json file) instead of measuring this machine")
@click.option("--no-progress", is_flag=True, help="do not show progress")
def calibrate_cmd(runs: int | None, seconds: float | None, workloads: tuple[str, ...], policy: str | None,
                  hz: str | None, preempt: str | None, release: str | None, host_cpus: int | None,
                  json_path: Path | None, from_json: Path | None, no_progress: bool) -> None:
    """Run built-in workloads on this kernel and in pvtime's host scheduler; compare their schedstat.

    Real pinned processes first (run_delay and timeslices from /proc/<pid>/schedstat), then the
    same tasks simulated with the kernel's HZ, policy and preemption mode. A target miss is
    reported in the table, not as a failure.
    """
    import json

    from pvtime import calibrate as cal

    if json_path is not None and not json_path.parent.is_dir():  # say so before minutes of measuring
        raise click.BadParameter(f"{json_path.parent}: no such folder", param_hint="--json")
    overrides = {"policy": policy, "hz": None if hz is None else int(hz), "preempt": preempt,
                 "release": release, "cpus": host_cpus}
    out = Console()
    if not out.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the table
        out = Console(width=180)
    err = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=err,
                  disable=no_progress, transient=True, auto_refresh=False) as bar:
        job = bar.add_task("calibrate", total=None)

        def progress(what: str) -> None:
            bar.update(job, description=what, refresh=True)

        try:
            if from_json is not None:
                given = [name for name, v in (("--runs", runs), ("--seconds", seconds)) if v is not None]
                if given:
                    raise click.UsageError(f"{' and '.join(given)}: fixed by the recording given with --from-json")
                recording = cal.load(from_json).select(workloads)
            else:
                chosen = _calibrate_workloads(workloads)
                kernel = cal.read_kernel()
                settings = cal.Settings(runs if runs is not None else 5, seconds if seconds is not None else 3.0)
                recording = cal.record(chosen, kernel, settings, progress)
            result = cal.compare(recording, overrides, progress)
        except KeyError as exc:
            raise click.BadParameter(str(exc.args[0]), param_hint="--workload") from None
        except (cal.RecordingError, cal.KernelReadError, cal.RealRunError, ValueError) as exc:
            raise ToolError(str(exc)) from None
    out.print(cal.render(result))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        except OSError as exc:
            raise ToolError(f"{json_path}: {exc.strerror or exc}") from None
        err.print(f"written {json_path}", highlight=False)
