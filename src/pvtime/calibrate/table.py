"""The calibration as a rich table: what the kernel was and what disturbed it, then kernel beside
simulator, per workload and task."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pvtime.calibrate.compare import (
    NOISY_OTHER_SHARE, SHARE_FLOOR, SPREAD_FACTOR, WAIT_FLOOR_NS, WAIT_TOLERANCE, Calibration,
)


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.3f}"


def _load(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "?"


def header(cal: Calibration) -> Text:
    """Kernel, settings and disturbances, a few lines above the table; [brackets]: where a value
    came from (read from the kernel, or ``override``)."""
    rec, k = cal.recording, cal.kernel
    src = k.sources
    lines = [(f"kernel: Linux {k.release} [{src.get('release', '?')}]; simulated as: policy {k.policy} "
              f"[{src.get('policy', '?')}], HZ={k.hz} [{src.get('hz', '?')}], preempt={k.preempt} "
              f"[{src.get('preempt', '?')}], {k.cpus} CPUs [{src.get('cpus', '?')}]")]
    if cal.kernel != rec.kernel:
        lines.append(f"recorded on: {rec.kernel.describe()}")
    s, m = rec.settings, rec.machine
    lines.append(f"runs: {s.runs} per workload, interleaved; window {s.seconds:g} s after {s.settle_s:g} s "
                 f"of settling; recorded {m.recorded_at or '?'}" + (f"; autogroup {m.autogroup}" if m.autogroup else ""))
    lines.append(f"load average (1 5 15 min): {_load(m.loadavg_before)} before, {_load(m.loadavg_after)} after "
                 "(which counts the calibration's own tasks)")
    window_cpu = sum(r.window_ns * len(r.cpus) for r in rec.runs)
    steal = sum(r.steal_ns for r in rec.runs)
    other = sum(r.other_cpu_ns for r in rec.runs)
    if window_cpu:
        lines.append(f"this machine's own steal (/proc/stat): {m.steal_ns / 1e6:.0f} ms over the "
                     f"{m.elapsed_ns / 1e9:.1f} s of real runs (all CPUs); on the workloads' CPUs during "
                     f"the windows {steal / 1e6:.0f} ms ({100 * steal / window_cpu:.2f} %); other CPU use there "
                     f"{other / 1e6:.0f} ms ({100 * other / window_cpu:.2f} %)")
    for name, why in rec.skipped.items():
        lines.append(f"skipped {name}: {why}")
    return Text("\n".join(lines))


def comparison_table(cal: Calibration) -> Table:
    """One row per workload task."""
    k = cal.kernel
    table = Table(title=f"pvtime calibrate: Linux {cal.recording.kernel.release} against pvtime's host "
                        f"({k.policy}, HZ={k.hz}, preempt={k.preempt}, {k.cpus} CPUs)")
    table.caption = (f"share: run_delay / window (kernel median over runs, spread = max - min; simulated "
                     f"median over {len(cal.phases_ns)} tick phases); diff = simulated - kernel; wait: "
                     f"run_delay per timeslice (ms), rel = (sim - kernel) / kernel. Target: |diff| <= "
                     f"max({SHARE_FLOOR}, {SPREAD_FACTOR:g} x spread) and |rel| <= {WAIT_TOLERANCE:.0%} "
                     f"(or waits within {WAIT_FLOOR_NS / 1e6:g} ms). "
                     f"other: the most CPU time anything else took on the workload's CPUs in one of its "
                     f"windows (/proc/stat, 10 ms resolution); noisy: over {NOISY_OTHER_SHARE:.0%} in a run, so "
                     f"the spread may be that disturbance's. A miss is a finding, not an error.")
    cols = ("workload", "task", "share kernel", "spread", "share sim", "diff", "slices/s kernel",
            "slices/s sim", "wait kernel", "wait sim", "rel", "verdict", "other")
    for i, col in enumerate(cols):
        table.add_column(col, justify="left" if i < 2 or col == "verdict" else "right", no_wrap=i < 2)
    last = None
    for r in cal.rows:
        rel = r.wait_rel_diff
        other = f"{cal.disturbance(r.workload)[0]:.0%}" if r.workload != last else ""
        table.add_row(r.workload if r.workload != last else "", f"{r.task} ({r.describe})",
                      _f(r.kernel_share.median, ".3f"), _f(r.kernel_share.spread, ".3f"),
                      _f(r.sim_share.median, ".3f"), f"{r.share_diff:+.3f}",
                      _f(r.kernel_slices_per_s.median, ".0f"), _f(r.sim_slices_per_s.median, ".0f"),
                      _ms(r.kernel_wait_ns.median), _ms(r.sim_wait_ns.median),
                      "-" if rel is None else f"{rel:+.0%}",
                      Text(r.verdict + (" (noisy)" if r.noisy else ""),
                           style="red" if r.verdict != "ok" else "yellow" if r.noisy else "green"), other)
        last = r.workload
    met = sum(r.verdict == "ok" for r in cal.rows)
    noisy = sum(r.verdict == "ok" and r.noisy for r in cal.rows)
    table.caption += f"\n{met} of {len(cal.rows)} rows meet the target" + (
        f" ({noisy} of them in noisy workloads)." if noisy else ".")
    return table


def render(cal: Calibration) -> Group:
    """The header and the table."""
    return Group(header(cal), comparison_table(cal))

