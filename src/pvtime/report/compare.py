"""`pvtime compare`: two results folders side by side, per vCPU -- the host's truth, the
stolen-time record and the guest's own steal of each run, their absolute and relative
differences, and whether a difference exceeds the tolerance.

RUN_A is the reference: a relative difference is (B - A) / |A|. A difference exceeds the
tolerance when |B - A| is over both `relative` x |A| and `absolute_ns`; a value present in one run
and missing in the other (null: no record without PV time, an ELF guest that never printed its
steal, a vCPU in one run only) always exceeds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from pvtime.report.files import SCHEMA_VERSION
from pvtime.report.outdir import MARKER
from pvtime.report.provenance import FILE as PROVENANCE_FILE
from pvtime.report.table import diff_ms

SUMMARY_FILE = "summary.json"

# The views of a vCPU's steal compared: summary.json's key and the column heading.
VIEWS: tuple[tuple[str, str], ...] = (
    ("host_run_delay_ns", "host truth"),  # run_delay since the baseline, as the run's table shows it
    ("record_steal_ns", "record"),
    ("guest_steal_ns", "guest"),
)


class ResultsError(Exception):
    """A folder that cannot be compared (the message names it and says why)."""


@dataclass(frozen=True)
class Results:
    """A results folder's summary.json, and from provenance.json the pvtime version that wrote it
    and the overrides the run was given (`--set`, `--seed`, ...)."""

    folder: Path
    summary: dict[str, Any]
    pvtime_version: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def schema_version(self) -> int:
        return int(self.summary["schema_version"])

    def describe(self) -> dict[str, Any]:
        """Which run it is: its folder, scenario, seed, duration, schema, pvtime version and overrides."""
        s = self.summary
        return {"folder": str(self.folder), "scenario": s.get("scenario"), "seed": s.get("seed"),
                "duration_ns": s.get("duration_ns"), "schema_version": self.schema_version,
                "pvtime_version": self.pvtime_version, "overrides": self.overrides}

    def vcpus(self) -> dict[tuple[str, int], dict[str, Any]]:
        """summary.json's vCPU rows by (vm, vcpu), in the run's order."""
        return {(row["vm"], int(row["vcpu"])): row for row in self.summary["vcpus"]}


def load_results(folder: Path) -> Results:
    """Read a results folder written by `pvtime run`; ResultsError if it is none, or one of a
    results schema this pvtime does not read."""
    if not folder.exists():
        raise ResultsError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ResultsError(f"{folder}: not a folder")
    path = folder / SUMMARY_FILE
    if not path.is_file():
        if (folder / MARKER).is_file():
            raise ResultsError(f"{folder}: a results folder without {SUMMARY_FILE} (a run that did not finish "
                               "writing it?)")
        raise ResultsError(f"{folder}: not a pvtime results folder (no {SUMMARY_FILE}): compare the folders "
                           "`pvtime run --out` writes")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("vcpus"), list):
        raise ResultsError(f"{path}: not a pvtime summary (no vcpus list)")
    version = summary.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultsError(f"{path}: no schema_version: written by a pvtime older than results schema 1; "
                           "run the scenario again to compare it")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{path}: results schema {version}, newer than this pvtime reads "
                           f"(schema {SCHEMA_VERSION} and older): upgrade pvtime")
    for i, row in enumerate(summary["vcpus"]):
        missing = [k for k in ("vm", "vcpu", *(key for key, _ in VIEWS)) if not isinstance(row, dict) or k not in row]
        if missing:
            raise ResultsError(f"{path}: vcpus[{i}] has no {', '.join(missing)}")
    return Results(folder, summary, *_provenance(folder / PROVENANCE_FILE))


def _provenance(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The version provenance.json names and the run's overrides (None and {} without a readable
    one: it is outside what is compared)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    overrides = doc.get("scenario", {}).get("overrides") if isinstance(doc, dict) else None
    overrides = overrides if isinstance(overrides, dict) else {}
    try:
        version = doc["pvtime"]["version"]
        describe = doc["pvtime"].get("git_describe")
    except (KeyError, TypeError, AttributeError):
        return None, overrides
    return (f"{version} ({describe})" if describe else str(version)), overrides


@dataclass(frozen=True)
class Tolerance:
    """How far B may be from A: within `relative` x |A| or within `absolute_ns`, whichever is larger."""

    relative: float = 0.0
    absolute_ns: int = 0

    def __post_init__(self) -> None:
        if self.relative < 0 or self.absolute_ns < 0:
            raise ValueError(f"a tolerance is not negative: relative {self.relative}, absolute {self.absolute_ns} ns")

    def allows(self, a: int, b: int) -> bool:
        """B is close enough to A."""
        return abs(b - a) <= max(self.absolute_ns, self.relative * abs(a))


@dataclass(frozen=True)
class Difference:
    """One view of one vCPU's steal in both runs."""

    a: int | None
    b: int | None
    exceeds: bool

    @property
    def diff_ns(self) -> int | None:
        """B - A (None unless both have a value)."""
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def relative(self) -> float | None:
        """(B - A) / |A|: 0 when both are 0; None unless both have a value and A is not 0."""
        if self.a is None or self.b is None:
            return None
        if self.a == 0:
            return 0.0 if self.b == 0 else None
        return (self.b - self.a) / abs(self.a)

    def to_dict(self) -> dict[str, Any]:
        rel = self.relative
        return {"a": self.a, "b": self.b, "diff_ns": self.diff_ns, "relative": None if rel is None else round(rel, 9),
                "exceeds": self.exceeds}


@dataclass(frozen=True)
class VcpuComparison:
    """One vCPU: its views in both runs (`only_in` names the run it is in when it is in one only)."""

    vm: str
    vcpu: int
    views: dict[str, Difference]
    only_in: str | None = None

    @property
    def exceeds(self) -> bool:
        return self.only_in is not None or any(d.exceeds for d in self.views.values())

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "vcpu": self.vcpu, "only_in": self.only_in, "exceeds": self.exceeds,
                **{key: d.to_dict() for key, d in self.views.items()}}


@dataclass(frozen=True)
class Comparison:
    """Two runs compared vCPU by vCPU."""

    a: Results
    b: Results
    tolerance: Tolerance
    vcpus: list[VcpuComparison] = field(default_factory=list)

    @property
    def exceeding(self) -> list[VcpuComparison]:
        """The vCPUs with a difference beyond the tolerance."""
        return [v for v in self.vcpus if v.exceeds]

    def notes(self) -> list[str]:
        """What differs between the runs besides steal (and makes the steal differ)."""
        out = []
        for key, what in (("scenario", "scenarios"), ("seed", "seeds"), ("duration_ns", "durations")):
            x, y = self.a.summary.get(key), self.b.summary.get(key)
            if x != y:
                out.append(f"the runs' {what} differ: {x} and {y}")
        if self.a.overrides != self.b.overrides:
            out.append(f"the runs' overrides differ: {_overrides(self.a) or 'none'} and {_overrides(self.b) or 'none'}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The --json answer's keys."""
        return {"a": self.a.describe(), "b": self.b.describe(),
                "tolerance": {"relative": self.tolerance.relative, "absolute_ns": self.tolerance.absolute_ns},
                "views": [key for key, _ in VIEWS], "vcpus": [v.to_dict() for v in self.vcpus],
                "exceeding": len(self.exceeding), "notes": self.notes()}


def compare(a: Results, b: Results, tolerance: Tolerance) -> Comparison:
    """Run B against run A: every vCPU of either run, in A's order, then B's own. ResultsError
    if they are of different results schemas (their keys may not mean the same)."""
    if a.schema_version != b.schema_version:
        raise ResultsError(f"results of different schemas: {a.folder} is schema {a.schema_version}, {b.folder} "
                           f"schema {b.schema_version}: run both with the same pvtime")
    rows_a, rows_b = a.vcpus(), b.vcpus()
    out = []
    for key in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        ra, rb = rows_a.get(key), rows_b.get(key)
        views = {}
        for view, _ in VIEWS:
            x = None if ra is None else ra[view]
            y = None if rb is None else rb[view]
            if x is not None and y is not None:
                exceeds = not tolerance.allows(x, y)
            else:
                exceeds = (x is None) != (y is None)  # a value in one run only
            views[view] = Difference(x, y, exceeds)
        only = None if ra is not None and rb is not None else ("a" if rb is None else "b")
        out.append(VcpuComparison(key[0], key[1], views, only))
    return Comparison(a, b, tolerance, out)


def comparison_table(c: Comparison) -> Table:
    """A row per vCPU: each view in A and B (ms), B - A (ms) and relative; beyond the tolerance in red."""
    table = Table(title=f"steal per vCPU: B against A ({len(c.exceeding)} of {len(c.vcpus)} vCPUs beyond the "
                        "tolerance)", caption_justify="left")
    table.add_column("vCPU", justify="right")
    for _, label in VIEWS:
        for col in ("A ms", "B ms", "B−A ms", "B−A %"):
            table.add_column(f"{label}\n{col}", justify="right")
    for v in c.vcpus:
        cells = [escape(f"{v.vm}/{v.vcpu}") + ("" if v.only_in is None else f" (only in {v.only_in.upper()})")]
        for key, _ in VIEWS:
            d = v.views[key]
            style = "bold red" if d.exceeds else ""
            cells += [_ms(d.a), _ms(d.b), _styled(diff_ms(d.diff_ns), style), _styled(_pct(d), style)]
        table.add_row(*cells, style="red" if v.only_in else None)
    t = c.tolerance
    lines = [f"A: {_run(c.a)}", f"B: {_run(c.b)}",
             "host truth: the vCPU thread's run_delay since the guest's PV_TIME_ST (summary.json host_run_delay_ns); "
             "record: the stolen-time record; guest: the guest's own /proc/stat steal",
             "B−A %: relative to A (new: A is 0); -: no value in that run",
             f"tolerance: |B−A| within {t.relative:g} x |A| or {t.absolute_ns:,} ns, whichever is larger; a value "
             "in one run only is beyond it"]
    table.caption = "\n".join(escape(line) for line in lines + c.notes())
    return table


def _run(r: Results) -> str:
    s = r.summary
    version = f", pvtime {r.pvtime_version}" if r.pvtime_version else ""
    overrides = f", set {_overrides(r)}" if r.overrides else ""
    return (f"{r.folder} ({s.get('scenario')}, seed {s.get('seed')}, {_ms(s.get('duration_ns'))} ms{version}"
            f"{overrides})")


def _overrides(r: Results) -> str:
    """The run's overrides as `--set` writes them."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in sorted(r.overrides.items()))


def _styled(text: str, style: str) -> str:
    return f"[{style}]{text}[/{style}]" if style else text


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def _pct(d: Difference) -> str:
    rel = d.relative
    if rel is None:
        return "new" if d.a == 0 and d.b is not None else "-"
    return "0" if rel == 0 else f"{100 * rel:+.2f}"
