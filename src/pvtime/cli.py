"""The `pvtime` command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from pvtime.calibrate.workloads import Workload


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
@click.option("--yes", is_flag=True, help="run even if the estimated cost is over a minute")
def run(scenario: str | None, out: Path | None, seed: int | None, duration_ms: int | None,
        no_progress: bool, yes: bool) -> None:
    """Run SCENARIO (a TOML file or an embedded name; default: the embedded `default`).

    A run estimated at over a minute (`pvtime.sim.cost`: vCPUs x simulated time, and the
    host CPUs' occupancy figure) prints the estimate and needs --yes.
    """
    from pvtime.report import migration_table, summary_table, write_results
    from pvtime.sim import scenario as scenarios
    from pvtime.sim.cost import CONFIRM_ABOVE_S, estimate_seconds
    from pvtime.sim.runner import run as run_scenario

    console = Console()
    if not console.is_terminal:  # a pipe or file gets rich's 80 columns, too narrow for the tables
        console = Console(width=120)
    try:
        sc = scenarios.load(scenario)
    except scenarios.ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    overrides = {k: v for k, v in (("seed", seed), ("duration_ms", duration_ms)) if v is not None}
    if overrides:
        sc = scenarios.Scenario(sc.spec.model_copy(update=overrides), sc.source)
    cost_s = estimate_seconds(sc.spec)
    if cost_s > CONFIRM_ABOVE_S:
        click.echo(f"pvtime: {sc.spec.name}: estimated {cost_s / 60:.1f} minutes of wall-clock time "
                   f"({sum(h.cpus for h in sc.spec.host)} host CPUs, {sc.spec.duration_ms} ms simulated)", err=True)
        if not yes:
            raise click.ClickException(f"a run estimated at over {CONFIRM_ABOVE_S:g} s: pass --yes to run it")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[virtual]}"), TimeElapsedColumn(), console=console,
                  disable=no_progress, transient=True) as bar:
        job = bar.add_task(f"{sc.spec.name}", total=sc.spec.duration_ms, virtual="")

        def progress(now_ns: int, total_ns: int) -> None:
            bar.update(job, completed=now_ns / 1e6, virtual=f"{now_ns / 1e9:.2f}/{total_ns / 1e9:.2f} s virtual")

        result = run_scenario(sc, progress)
    console.print(summary_table(result))
    if result.migrations:
        console.print(migration_table(result))
    for vm in result.vms:
        if vm.stopped is not None:
            at = "" if vm.stopped_ns is None else f" at {vm.stopped_ns / 1e6:.1f} ms"
            # A guest that exits with status 0 (semihosting) has finished its job: not a failure.
            style = "green" if vm.exit_status == 0 else "red"
            console.print(f"[{style}]{vm.name} stopped{at}:[/{style}] {vm.stopped}", markup=True, highlight=False)
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


@main.command("lpt")
@click.option("--native", "native_hz", type=click.IntRange(1, 0xFFFF_FFFF), required=True,
              help="the host counter frequency (Hz)")
@click.option("--pv", "pv_hz", type=click.IntRange(1, 0xFFFF_FFFF), required=True,
              help="the PV frequency the guest sees (Hz)")
def lpt_cmd(native_hz: int, pv_hz: int) -> None:
    """The LPT record for a host of --native Hz presenting --pv Hz: fields, error bounds, overflow."""
    from pvtime.fixedpoint import describe

    d = describe(native_hz, pv_hz)
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
    """Migrate a VM between two pvtime processes over a loopback socket."""


@migrate_group.command("listen")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: any free port")
@click.option("--native", "native_hz", type=click.IntRange(1, 0xFFFF_FFFF), default=1_000_000_000, show_default=True)
@click.option("--run-ms", type=click.IntRange(0), default=10, show_default=True,
              help="virtual ms to run the VM after the restore")
# The time-outs' defaults are migration_net's ACCEPT_TIMEOUT_S and TIMEOUT_S (a test keeps them equal;
# importing pvtime.vmm here would slow every command's start).
@click.option("--accept-timeout", type=click.FloatRange(0, min_open=True), default=120.0,
              show_default=True, help="wall-clock seconds to wait for a sender to connect")
@click.option("--read-timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="wall-clock seconds each read waits for the sender before the migration is refused")
def migrate_listen(port: int, native_hz: int, run_ms: int, accept_timeout: float, read_timeout: float) -> None:
    """Receive one VM on 127.0.0.1:PORT, run it, print a JSON summary."""
    import json

    from pvtime.sim.migration import MigrationError, listen_vm

    try:
        result = listen_vm(port, native_hz=native_hz, run_ms=run_ms,
                           announce=lambda p: click.echo(f"listening on 127.0.0.1:{p}", err=True),
                           accept_timeout=accept_timeout, timeout=read_timeout)
    except MigrationError as err:
        raise click.ClickException(f"migration refused: {err}") from None
    except OSError as err:  # the port is taken, or the like: before any stream
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {err.strerror or err}") from None
    click.echo(json.dumps(result, sort_keys=True))


@migrate_group.command("send")
@click.option("--to", "to", required=True, help="HOST:PORT of a `pvtime migrate listen`")
@click.option("--native", "native_hz", type=click.IntRange(1, 0xFFFF_FFFF), default=25_000_000, show_default=True)
@click.option("--pv", "pv_hz", type=click.IntRange(0, 0xFFFF_FFFF), default=1_000_000_000, show_default=True,
              help="LPT frequency (0: no LPT)")
@click.option("--run-ms", type=click.IntRange(0), default=10, show_default=True,
              help="virtual ms to run the VM before migrating it")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="migrate this AArch64 ELF (a path, or a packaged image name such as minikernel) "
                   "instead of the clock-watching model VM")
@click.option("--vcpus", type=click.IntRange(1, 64), default=1, show_default=True, help="vCPUs of the --image VM")
def migrate_send(to: str, native_hz: int, pv_hz: int, run_ms: int, image: Path | None, vcpus: int) -> None:
    """Run a VM (a small clock-watching one, or --image), migrate it to --to, print a JSON summary."""
    import json

    from pvtime.sim.migration import MigrationError, send_vm
    from pvtime.vmm.elf import ElfError
    from pvtime.vmm.images import packaged_image

    host, _, port = to.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{to!r} is not HOST:PORT", param_hint="--to")
    data = None
    if image is not None:
        path = image if image.exists() else None
        if path is None:
            try:
                path = packaged_image(str(image))
            except (KeyError, ValueError, FileNotFoundError):
                raise click.BadParameter(f"{image}: no such file or packaged image", param_hint="--image") from None
        data = path.read_bytes()
    try:
        result = send_vm((host, int(port)), native_hz=native_hz, pv_hz=pv_hz or None, run_ms=run_ms,
                         image=data, vcpus=vcpus)
    except ElfError as err:
        raise click.ClickException(str(err)) from None
    except MigrationError as err:
        raise click.ClickException(f"not migrated: {err}") from None
    except OSError as err:
        raise click.ClickException(f"cannot reach {to}: {err}") from None
    click.echo(json.dumps(result, sort_keys=True))
    if not result["accepted"]:
        raise click.ClickException(f"the destination refused the VM: {result['message']} (the VM kept running)")


@main.group("guest")
def guest_group() -> None:
    """Run AArch64 guest programs (freestanding ELF images) under the hypervisor."""


@guest_group.command("run")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vcpus", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--host-cpus", type=click.IntRange(1, 256), default=1, show_default=True,
              help="host CPUs; fewer than --vcpus makes the vCPU threads wait (steal)")
@click.option("--memory", "memory_mib", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="guest RAM in MiB, at 0x40000000")
@click.option("--counter-hz", type=click.IntRange(1, 0xFFFF_FFFF), default=62_500_000, show_default=True,
              help="generic-timer frequency (CNTFRQ_EL0)")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="virtual seconds before the run is abandoned (exit 124)")
@click.option("--mips", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="guest speed: millions of instructions per virtual second")
@click.option("--lpt-pv-hz", type=click.IntRange(1, 0xFFFF_FFFF), default=None,
              help="configure Live Physical Time: the PV counter frequency the guest sees")
@click.option("--stats", is_flag=True, help="print per-vCPU instructions and steal to stderr at the end")
def guest_run(image: Path, vcpus: int, host_cpus: int, memory_mib: int, counter_hz: int,
              time_limit_s: float, mips: int, lpt_pv_hz: int | None, stats: bool) -> None:
    """Run IMAGE (a freestanding AArch64 ELF for QEMU virt) with its console on stdout.

    vCPU 0 starts at the ELF entry (EL1h, MMU off); the others wait for PSCI CPU_ON. The exit
    status is the guest's semihosting exit status; 124 when --time-limit passes first; 125 when
    the VM fails (a guest fault, or it stopped without a status: the reason goes to stderr).
    """
    import sys

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
        result = run_guest(image, options, console=console)
    except (ElfError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if stats:
        for v in result.vcpus:
            click.echo(f"vcpu{v.vcpu}: {v.instructions} instructions, run_delay {v.run_delay_ns} ns, "
                       f"record steal {v.record_steal_ns} ns", err=True)
    if result.exit_status is not None:
        sys.exit(result.exit_status)
    if result.stopped is None:
        click.echo(f"pvtime: {image}: time limit of {time_limit_s:g} virtual s reached", err=True)
        sys.exit(124)
    if result.stopped.is_power_off:
        click.echo(f"pvtime: {image}: the guest powered off (PSCI SYSTEM_OFF) without an exit status", err=True)
        sys.exit(0)
    click.echo(f"pvtime: {image}: VM stopped: {result.stopped}", err=True)
    sys.exit(125)


@main.group("linux")
def linux_group() -> None:
    """Boot a Linux arm64 kernel under the hypervisor (the packaged one, or your own)."""


LINUX_CONSOLE_ARGS = "console=ttyAMA0"


@linux_group.command("run")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="an arm64 Image (raw or gzipped); default: the packaged Linux 6.1 kernel")
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a newc cpio initramfs (gzipped or not); default: the packaged one, whose /init keeps "
                   "every CPU busy for pvtime.busy_ms and prints /proc/stat before and after")
@click.option("--append", "append", default="", help=f"kernel command line, after {LINUX_CONSOLE_ARGS!r}")
@click.option("--vcpus", type=click.IntRange(1, 8), default=1, show_default=True,
              help="vCPUs (a GICv2 serves at most 8)")
@click.option("--host-cpus", type=click.IntRange(1, 256), default=1, show_default=True,
              help="host CPUs; fewer than --vcpus makes the vCPU threads wait (steal)")
@click.option("--memory", "memory_mib", type=click.IntRange(16, 4096), default=128, show_default=True,
              help="guest RAM in MiB, at 0x40000000")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="virtual seconds before the run is abandoned (exit 124)")
@click.option("--mips", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="guest speed: millions of instructions per virtual second")
@click.option("--stats", is_flag=True,
              help="print per vCPU the host's truth (run_delay since PV_TIME_ST) and the record to stderr")
def linux_run(kernel: Path | None, initrd: Path | None, append: str, vcpus: int, host_cpus: int,
              memory_mib: int, time_limit_s: float, mips: int, stats: bool) -> None:
    """Boot Linux with its console on stdout; exit 0 when it powers off (PSCI SYSTEM_OFF).

    The machine is QEMU virt's layout with a vGICv2, PSCI over HVC and PV time; the VMM passes a
    device tree in x0 as the arm64 boot protocol says. 124 when --time-limit passes first; 125
    when the VM fails (the reason goes to stderr).
    """
    import sys

    from pvtime.sim.guest_run import GuestRunOptions, run_guest
    from pvtime.vmm.arm64_image import ImageError
    from pvtime.vmm.images import linux_image
    from pvtime.vmm.linux_boot import LinuxBoot

    out = sys.stdout.buffer

    def console(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        boot = LinuxBoot.from_files(kernel or linux_image("Image.gz"),
                                    initrd or linux_image("initramfs.cpio.gz"),
                                    f"{LINUX_CONSOLE_ARGS} {append}".strip())
        options = GuestRunOptions(vcpus=vcpus, host_cpus=host_cpus, memory_mib=memory_mib,
                                  time_limit_ns=int(time_limit_s * 1e9), instructions_per_sec=mips * 1_000_000)
        result = run_guest(boot, options, console=console)
    except (ImageError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if stats:
        for v in result.vcpus:
            truth = "-" if v.host_steal_ns is None else f"{v.host_steal_ns} ns"
            click.echo(f"vcpu{v.vcpu}: {v.instructions} instructions, host run_delay since PV_TIME_ST {truth}, "
                       f"record steal {v.record_steal_ns} ns", err=True)
    if result.stopped is not None and result.stopped.is_power_off:
        sys.exit(0)
    if result.stopped is None:
        click.echo(f"pvtime: time limit of {time_limit_s:g} virtual s reached", err=True)
        sys.exit(124)
    click.echo(f"pvtime: VM stopped: {result.stopped}", err=True)
    for err in result.errors:
        click.echo(f"pvtime: {err}", err=True)
    sys.exit(125)


def _calibrate_workloads(names: tuple[str, ...] = ()) -> tuple[Workload, ...]:
    """The built-in calibration workloads called `names` (all when empty); KeyError for others."""
    from pvtime.calibrate.workloads import by_name

    return by_name(names)


def _sched_choices(name: str) -> list[str]:
    """The values `pvtime.host.sched_config` accepts for policy, HZ or preempt, as option choices."""
    from pvtime.host import sched_config

    return [str(v) for v in getattr(sched_config, name)]


@main.command("calibrate")
@click.option("--runs", type=click.IntRange(1), default=None,
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
@click.option("--cpus", "host_cpus", type=click.IntRange(1, 256), default=None,
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
            raise click.ClickException(str(exc)) from None
    out.print(cal.render(result))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        except OSError as exc:
            raise click.ClickException(f"{json_path}: {exc.strerror or exc}") from None
        err.print(f"written {json_path}", highlight=False)


if __name__ == "__main__":
    main()
