"""The results folder: series as CSV and Parquet, figures, the Perfetto trace, summary.json, and
(outside the byte-identity promise) provenance.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvtime.report import outdir
from pvtime.report.provenance import FILE as PROVENANCE_FILE
from pvtime.sim.recorder import CATEGORIES, CPU_TRACK_BASE, STEAL_COLUMNS, trace_us
from pvtime.sim.results import RunResult
from pvtime.sim.scenario import MigrationRoute, migration_routes

if TYPE_CHECKING:
    import pyarrow as pa

    from pvtime.report.figure_process import FigureProcess

# The version of the results files' shape (summary.json's keys, the series' columns...): raised when
# a change would mislead a reader of the old shape. summary.json carries it as `schema_version`.
SCHEMA_VERSION = 1

# docs/results.md says what each column means.
SERIES_COLUMNS = ("time_ns", "host", "vm", "vcpu", "pv_time_st_calls", *STEAL_COLUMNS)
OCCUPANCY_COLUMNS = ("time_ns", "host", "cpu", "vcpu_ns", "vmm_ns", "noise_ns", "idle_ns")
_STRING_COLUMNS = {"host", "vm"}


def write_results(result: RunResult, out: Path, *, force: bool = False,
                  provenance: dict[str, Any] | None = None, figures: FigureProcess | None = None) -> list[Path]:
    """Write every output file into `out`, a results folder replaced whole (`report.outdir`: a
    folder of something else raises OutFolderError); return their paths. The figures are drawn by
    `figures` if given (at the same time as the other files are written), else here."""
    outdir.claim(out, force=force)
    drawn = [] if figures is None else figures.send(result, out)
    written = []
    series = series_columns(result)
    occupancy = occupancy_columns(result)
    for name, cols in (("series", series), ("occupancy", occupancy)):
        written.append(_write_csv(out / f"{name}.csv", cols))
        written.append(_write_parquet(out / f"{name}.parquet", cols, _schema(cols)))
    if figures is None:
        from pvtime.report.figures import occupancy_figure, steal_figure  # matplotlib: only when drawing

        steal_figure(result, out / "steal.png")
        occupancy_figure(result, out / "occupancy.png")
        drawn = [out / "steal.png", out / "occupancy.png"]
    written += drawn
    if result.spec.trace:
        written.append(_write_json(out / "trace.json", trace_document(result), indent=None))
    written.append(_write_json(out / "summary.json", summary(result), indent=2))
    for vm in result.vms:
        if vm.guest != "model" or vm.console:
            written.append(_write_text(out / console_file(vm.name), vm.console))
    if provenance is not None:
        written.append(_write_json(out / PROVENANCE_FILE, provenance, indent=2))
    if figures is not None:
        figures.wait()
    outdir.seal(out, [p.name for p in written])
    return written


def console_file(vm: str) -> str:
    """The file a VM's console goes to (every ELF guest's, and any other VM's that printed)."""
    return f"console-{vm}.txt"


def series_columns(result: RunResult) -> dict[str, list[Any]]:
    """Per-vCPU steal at each sample time; None (empty in CSV, null in Parquet) where a view has
    no value: before the vCPU first ran, no record before PV_TIME_ST or without PV time, an ELF
    guest's steal until it prints it."""
    cols: dict[str, list[Any]] = {c: [] for c in SERIES_COLUMNS}
    grid = [int(t) for t in result.grid_ns]
    for row in result.vcpus:
        s = result.series[f"{row.vm}/vcpu{row.vcpu}"]
        cols["time_ns"] += grid
        cols["host"] += [str(h) for h in s["host"]]
        cols["vm"] += [row.vm] * len(grid)
        cols["vcpu"] += [row.vcpu] * len(grid)
        cols["pv_time_st_calls"] += [int(n) for n in s["pv_time_st_calls"]]
        for c in STEAL_COLUMNS:
            cols[c] += s[c].tolist()  # masked values become None
    return cols


def occupancy_columns(result: RunResult) -> dict[str, list[Any]]:
    """Busy time per host CPU, task category and sample interval."""
    cols: dict[str, list[Any]] = {c: [] for c in OCCUPANCY_COLUMNS}
    sample = result.spec.sample_ms * 1_000_000
    for (host, cpu), busy in sorted(result.occupancy.items()):
        for b in range(busy.shape[1]):
            start = b * sample
            width = min(sample, result.duration_ns - start)
            used = [int(busy[c, b]) for c in range(len(CATEGORIES))]
            cols["time_ns"].append(start)
            cols["host"].append(host)
            cols["cpu"].append(cpu)
            for cat, v in zip(CATEGORIES, used):
                cols[f"{cat}_ns"].append(v)
            cols["idle_ns"].append(width - sum(used))
    return cols


def trace_document(result: RunResult) -> dict[str, Any]:
    """Chrome/Perfetto trace: a process per host, a thread per task (and one per CPU), and a
    process of counters, one per vCPU, with its steal as each side sees it.

    Times are microseconds written exactly from integer ns (`recorder.trace_us`): read as
    decimals, as Perfetto does, no slice on a track begins before the previous one ends.
    """
    meta: list[dict[str, Any]] = []
    for host, pid in sorted(result.host_pids.items(), key=lambda kv: kv[1]):
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": host}})
        for cpu in range(result.host_cpus[host]):
            meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": CPU_TRACK_BASE + cpu,
                         "args": {"name": f"CPU {cpu}"}})
    for (pid, tid), name in sorted(result.task_names.items()):
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
    # The counters live in a process of their own, so that a migrated vCPU keeps one track.
    steal_pid = max(result.host_pids.values(), default=0) + 1
    meta.append({"ph": "M", "name": "process_name", "pid": steal_pid, "tid": 0,
                 "args": {"name": "steal per vCPU (ms)"}})
    counters: list[dict[str, Any]] = []
    views = (("host wait", "host_wait_ns"), ("record", "record_steal_ns"), ("guest /proc/stat", "guest_steal_ns"))
    for row in result.vcpus:
        key = f"{row.vm}/vcpu{row.vcpu}"
        s = result.series[key]
        for i, t in enumerate(result.grid_ns):
            args = {label: round(int(s[col][i]) / 1e6, 6) for label, col in views if s[col][i] is not np.ma.masked}
            if args:
                counters.append({"ph": "C", "name": f"steal {key}", "pid": steal_pid, "ts": trace_us(int(t)),
                                 "args": args})
    return {"traceEvents": meta + result.trace_events + counters,
            "otherData": {"scenario": result.spec.name, "seed": result.spec.seed}}


def summary(result: RunResult) -> dict[str, Any]:
    """Machine-readable summary: per vCPU, per task, per VM, and the simulator's counters."""
    spec = result.spec
    routes = {r.index: r for r in migration_routes(spec)}
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": spec.name,
        "source": result.source,
        "seed": spec.seed,
        "duration_ns": result.duration_ns,
        "hosts": [{"name": h.name, "cpus": h.cpus, "counter_hz": h.counter_hz,
                   "sched": {"policy": h.sched.policy, "hz": h.sched.hz, "preempt": h.sched.preempt}}
                  for h in spec.host],
        "vcpus": [{
            "host": r.host, "vm": r.vm, "vcpu": r.vcpu, "task": r.task, "tid": r.tid,
            "pvtime": r.pvtime, "guest": r.guest,
            "host_run_delay_ns": r.host_run_delay_ns, "record_steal_ns": r.record_steal_ns,
            "guest_steal_ns": r.guest_steal_ns, "proc_stat_steal_user_hz": r.proc_stat_steal,
            "proc_stat_total_user_hz": r.proc_stat_total, "guest_steal_note": r.guest_note,
            "steal_pct": None if r.steal_pct is None else round(r.steal_pct, 6),
            "record_minus_host_ns": r.record_minus_host_ns,
            "proc_stat_minus_host_ns": r.proc_stat_minus_host_ns,
            "elapsed_ns": r.elapsed_ns, "run_time_ns": r.run_time_ns, "timeslices": r.timeslices,
            "vcpu_loads": r.vcpu_loads, "host_wait_ns": r.host_wait_ns,
            "pv_time_st_calls": r.pv_time_st_calls, "first_run_ns": r.first_run_ns,
        } for r in result.vcpus],
        "tasks": [{"host": t.host, "name": t.name, "tid": t.tid, "kind": t.kind,
                   "schedstat": [t.run_time_ns, t.run_delay_ns, t.timeslices]} for t in result.tasks],
        "vms": [{"host": v.host, "name": v.name, "guest": v.guest,
                 "stopped": None if v.stopped is None else str(v.stopped),
                 "stopped_ns": v.stopped_ns, "exit_status": v.exit_status, "proc_stat": v.proc_stat,
                 "console": v.console} for v in result.vms],
        "stats": result.stats,
        "migrations": [{**m.to_dict(), **_route(routes.get(i))} for i, m in enumerate(result.migrations)],
        "clocks": {vm: c.to_dict() for vm, c in result.clocks.items()},
    }


def _route(route: MigrationRoute | None) -> dict[str, Any]:
    """A migration's counter frequencies, and the flag of a VM without LPT moved across them."""
    if route is None:
        return {}
    return {"counter_hz": [route.from_hz, route.to_hz],
            "frequency_change_without_lpt": route.frequency_change_without_lpt}


def _write_text(path: Path, text: str) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def _write_csv(path: Path, cols: dict[str, list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        w.writerows(zip(*cols.values()))
    return path


def _schema(cols: dict[str, list[Any]]) -> pa.Schema:
    """Strings for names, int64 for the rest: a column of gaps only is still typed."""
    import pyarrow as pa

    return pa.schema([(c, pa.string() if c in _STRING_COLUMNS else pa.int64()) for c in cols])


def _write_parquet(path: Path, cols: dict[str, list[Any]], schema: pa.Schema) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [_arrow_array(cols[field.name], field.type) for field in schema]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
    return path


def _arrow_array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """A string or int64 Arrow array of `values` (None: null), built from its buffers: the same
    array `pyarrow.array` builds, without the pandas import (about half a second) that
    `pyarrow.array` makes on its first call to look for pandas types."""
    import pyarrow as pa

    nulls = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    null_count = int(nulls.sum())
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if null_count else None
    if kind == pa.string():
        data = [b"" if v is None else str(v).encode("utf-8") for v in values]
        offsets = np.zeros(len(data) + 1, dtype=np.int32)
        np.cumsum([len(b) for b in data], out=offsets[1:])
        buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    elif kind == pa.int64():
        ints = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=len(values))
        buffers = [validity, pa.py_buffer(ints)]
    else:
        raise TypeError(f"no Arrow column of {kind}")
    return pa.Array.from_buffers(kind, len(values), buffers, null_count=null_count)


def _write_json(path: Path, doc: Any, *, indent: int | None) -> Path:
    # dumps, not dump: without indent, dumps takes the C encoder, and dump never does
    text = json.dumps(doc, sort_keys=True, indent=indent, separators=(",", ": ") if indent else (",", ":"))
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
    return path
