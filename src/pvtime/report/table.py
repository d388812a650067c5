"""The per-vCPU summary table: host run_delay, the steal the guest saw, /proc/stat steal %, and
the differences."""

from __future__ import annotations

from rich.table import Table

from pvtime.sim.results import RunResult


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f}"


def summary_table(result: RunResult) -> Table:
    """One row per vCPU."""
    spec = result.spec
    table = Table(title=f"{spec.name}: steal per vCPU after {spec.duration_ms} ms (seed {spec.seed})")
    table.caption = ("host run_delay: the vCPU thread's wait since the guest's PV_TIME_ST (truth); guest "
                     "clock: the stolen-time record; /proc/stat: the guest's accounted steal (ticks; an ELF "
                     "guest's as it printed it); times in ms")
    table.caption += "\nhost scheduler: " + "; ".join(
        f"{h.name} {h.sched.policy}, HZ={h.sched.hz}, preempt={h.sched.preempt}" for h in spec.host)
    for col in ("vCPU", "pv", "host run_delay", "guest clock", "/proc/stat", "steal %",
                "clock−host ns", "stat−host"):
        table.add_column(col, justify="right")
    notes: dict[str, list[str]] = {}
    for row in result.vcpus:
        if row.guest_note is not None:
            notes.setdefault(row.guest_note, []).append(f"{row.vm}/{row.vcpu}")
        pct = row.steal_pct
        diff = row.record_minus_host_ns
        lag = row.proc_stat_minus_host_ns
        table.add_row(
            f"{row.vm}/{row.vcpu}", "on" if row.pvtime else "off", _ms(row.host_run_delay_ns),
            _ms(row.record_steal_ns), _ms(row.guest_steal_ns), "-" if pct is None else f"{pct:.1f}",
            "-" if diff is None else str(diff), "-" if lag is None else f"{lag / 1e6:.1f}")
    for note, who in notes.items():  # why a guest's own steal is "-"
        table.caption += f"\n{', '.join(who)} /proc/stat -: {note}"
    for vm in result.vms:
        if vm.exit_status is not None:
            table.caption += f"\n{vm.name}: guest exit status {vm.exit_status}" + (
                "" if vm.exit_status == 0 else " (FAILED)")
    return table


def migration_table(result: RunResult) -> Table:
    """One row per migration, and each migrated VM's guest clock against ideal (virtual) time."""
    table = Table(title="live migrations: downtime, and the guest clock against ideal time")
    table.caption = ("clock error: the guest clock (PV counter with LPT) minus virtual time at its "
                     "ticks, over the whole run; late: tick interrupt after its deadline (steal)")
    for col in ("VM", "route", "at ms", "status", "rounds", "MiB", "down ms", "clock err ns",
                "late ms", "early"):
        table.add_column(col, justify="right")
    for m in result.migrations:
        c = result.clocks.get(m.vm)
        down = m.downtime_ns
        err_min = None if c is None else c.error_min_ns
        err = "-" if c is None or err_min is None else f"{err_min}..{c.error_max_ns}"
        late = None if c is None else c.lateness_max_ns
        table.add_row(m.vm, f"{m.from_host or '?'}>{m.to}", str(m.at_ms),
                      m.status.value if not m.error else f"error: {m.error}",
                      "-" if m.rounds is None else str(m.rounds), f"{(m.bytes or 0) / 2**20:.2f}",
                      "-" if down is None else f"{down / 1e6:.3f}", err,
                      "-" if late is None else f"{late / 1e6:.1f}", "-" if c is None else str(c.timer_early))
    return table
