"""The tables `pvtime run` prints: per vCPU, host run_delay, the steal the guest saw, /proc/stat
steal and the differences (all in ms); per migration, its route and downtime, and each migrated
VM's guest clock over the whole run."""

from __future__ import annotations

from itertools import groupby

from rich.cells import cell_len
from rich.table import Table

from pvtime.sim.results import RunResult, VcpuRow
from pvtime.sim.scenario import migration_routes


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f}"


def diff_ms(ns: int | None) -> str:
    """A difference in ms: "0" when exact, else signed, to the µs (summary.json has the ns)."""
    if ns is None:
        return "-"
    return "0" if ns == 0 else f"{ns / 1e6:+.3f}"


def _hz(hz: int) -> str:
    for unit, scale in (("GHz", 10**9), ("MHz", 10**6), ("kHz", 10**3)):
        if hz >= scale:
            return f"{hz / scale:g} {unit}"
    return f"{hz} Hz"


def summary_table(result: RunResult, width: int | None = None) -> Table:
    """One row per vCPU. Given the console's `width`, a table that fits in it has its columns'
    widths set to their contents': the same table, and rich no longer measures each cell to find
    them (a third of the time a table of 1024 vCPUs takes to print)."""
    spec = result.spec
    table = Table(title=f"{spec.name}: steal per vCPU after {spec.duration_ms} ms (seed {spec.seed})",
                  caption_justify="left")
    table.caption = "\n".join((
        "host run_delay: the vCPU thread's wait since the guest's PV_TIME_ST (the truth)",
        "guest clock: what the stolen-time record says (pv: the VM has PV stolen time)",
        "/proc/stat: the steal the guest kernel accounted (its counter in ns, shown in ms; /proc/stat prints it "
        "in whole USER_HZ ticks; an ELF or Linux guest's: as it printed it)",
        "steal %: the steal /proc/stat shows (whole ticks) over the vCPU's elapsed time since its first run (an ELF "
        "or Linux guest's: over the total of its /proc/stat line, as top computes it)",
        "clock−host, stat−host: the guest's figure minus the truth (0: exact)",
        "host scheduler: " + "; ".join(
            f"{h.name} {h.sched.policy}, HZ={h.sched.hz}, preempt={h.sched.preempt}" for h in spec.host)))
    for col in ("vCPU", "pv", "host run_delay ms", "guest clock ms", "/proc/stat ms", "steal %", "clock−host ms",
                "stat−host ms"):
        table.add_column(col, justify="right")
    notes: dict[str, list[str]] = {}
    idle = [row for row in result.vcpus if never_ran(row)]
    for row in result.vcpus:
        name = f"{row.vm}/{row.vcpu}"
        if never_ran(row):  # no guest ran on it: nothing was stolen from it, nothing seen (the note says so)
            table.add_row(name, "on" if row.pvtime else "off", *["-"] * 6, style="dim")
            continue
        if row.guest_note is not None:
            notes.setdefault(row.guest_note, []).append(name)
        pct = row.steal_pct
        table.add_row(
            name, "on" if row.pvtime else "off", _ms(row.host_run_delay_ns),
            _ms(row.record_steal_ns), _ms(row.guest_steal_ns), "-" if pct is None else f"{pct:.1f}",
            diff_ms(row.record_minus_host_ns), diff_ms(row.proc_stat_minus_host_ns))
    if idle:
        table.caption += (f"\n{len(idle)} vCPU{'s' if len(idle) > 1 else ''} never ran (no host CPU time before the "
                          f"end of the run: no guest ran there to steal from): {vcpu_ranges(idle)}")
    for note, who in notes.items():  # why a guest's own steal is "-"
        table.caption += f"\n{', '.join(who)} /proc/stat -: {note}"
    for vm in result.vms:
        if vm.exit_status is not None:
            table.caption += f"\n{vm.name}: guest exit status {vm.exit_status}" + (
                "" if vm.exit_status == 0 else " (FAILED)")
    if width is not None:
        _fix_widths(table, width)
    return table


def _fix_widths(table: Table, width: int) -> None:
    """Each column as wide as its widest cell (header included), if the table then fits `width`."""
    widths = [max(cell_len(str(cell)) for cell in (col.header, *col.cells)) for col in table.columns]
    borders = 3 * len(widths) + 1  # a space either side of each cell, a rule between and around them
    if sum(widths) + borders <= width:
        for col, w in zip(table.columns, widths):
            col.width = w


def never_ran(row: VcpuRow) -> bool:
    """The vCPU's thread never had a host CPU (overcommit, or a secondary vCPU never turned on)."""
    return row.timeslices == 0


def vcpu_ranges(rows: list[VcpuRow]) -> str:
    """vCPUs as a reader takes them in: `big/3..5, big/9, web/1`."""
    parts: list[str] = []
    for vm, group in groupby(rows, key=lambda r: r.vm):
        ids = [r.vcpu for r in group]
        runs = groupby(enumerate(ids), key=lambda p: p[1] - p[0])
        for _, run in runs:
            seq = [v for _, v in run]
            parts.append(f"{vm}/{seq[0]}" if len(seq) == 1 else f"{vm}/{seq[0]}..{seq[-1]}")
    return ", ".join(parts)


def migration_table(result: RunResult) -> Table:
    """One row per migration; each migrated VM's guest clock over the whole run in the caption."""
    routes = {r.index: r for r in migration_routes(result.spec)}
    table = Table(title="live migrations", caption_justify="left")
    for col in ("VM", "route", "counter", "at ms", "status", "rounds", "MiB", "down ms"):
        table.add_column(col, justify="right")
    flagged: list[str] = []
    for i, m in enumerate(result.migrations):
        down = m.downtime_ns
        route = routes.get(i)
        counter = "-" if route is None else (
            _hz(route.from_hz) if route.from_hz == route.to_hz else f"{_hz(route.from_hz)}>{_hz(route.to_hz)}")
        if route is not None and route.frequency_change_without_lpt:
            counter += " (!)"
            flagged.append(f"{m.vm} at {m.at_ms} ms")  # allowed by the scenario: refused otherwise
        table.add_row(m.vm, f"{m.from_host or '?'}>{m.to}", counter, str(m.at_ms),
                      m.status.value if not m.error else f"error: {m.error}",
                      "-" if m.rounds is None else str(m.rounds), f"{(m.bytes or 0) / 2**20:.2f}",
                      "-" if down is None else f"{down / 1e6:.3f}")
    lines = ["down: from the source's last guest instruction to the restore",
             "counter: the two hosts' counter frequencies (a VM with LPT keeps its PV frequency across them)"]
    if flagged:
        lines.append(f"(!) {', '.join(flagged)}: a VM without LPT moved to another counter frequency "
                     "(allow_frequency_change = true): its clock runs at the wrong rate from then on")
    for vm in dict.fromkeys(m.vm for m in result.migrations):
        c = result.clocks.get(vm)
        if c is None or c.error_min_ns is None:
            continue
        late = c.lateness_max_ns
        lines.append(f"{vm}'s guest clock over the whole run ({c.clocksource or 'counter'}), at its ticks: "
                     f"{c.error_min_ns}..{c.error_max_ns} ns from ideal time; tick interrupts up to {_ms(late)} ms "
                     f"late (steal), {c.timer_early} early")
    table.caption = "\n".join(lines)
    return table
