"""The results folder as pvtime owns it: a marker file says a folder holds pvtime's results, so a
new run may replace them; a folder without the marker is never cleared.

The marker (`.pvtime-results`) is written first, before any result, and rewritten last with the
names of the files the run wrote. A folder with the marker is cleared before a run writes into it,
so no file of an earlier run (of another scenario) survives; if it also holds files pvtime did not
write (not named in its marker), it is cleared only with `force`. A marker that names no files is
left by a run that did not finish writing: everything beside it is that run's. A folder written
before the marker existed (pvtime 0.1.0) is recognised by its file names alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

MARKER = ".pvtime-results"
# What pvtime 0.1.0 wrote, without a marker: such a folder is a results folder too.
_UNMARKED = {"series.csv", "series.parquet", "occupancy.csv", "occupancy.parquet", "steal.png", "occupancy.png",
             "trace.json", "summary.json"}
_HEADER = "This folder holds the results of a pvtime run: `pvtime run --out` replaces all of its contents.\n"


class OutFolderError(Exception):
    """A folder pvtime may not write its results into (the message says why and what to do)."""


def check(folder: Path, *, force: bool = False) -> None:
    """Raise OutFolderError unless `folder` may take a run's results: it does not exist, is empty,
    or holds pvtime's marker (and, unless `force`, nothing pvtime did not write)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutFolderError(f"{folder}: not a folder")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    marker = folder / MARKER
    if not marker.is_file() and _unmarked_results(entries):
        return
    if not marker.is_file():
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutFolderError(f"{folder}: not empty ({shown}) and not a pvtime results folder (no {MARKER} file): "
                             "name another folder, or empty this one yourself (--force clears only a results folder)")
    listed = _listed(marker)
    foreign = [] if not listed else [n for n in entries if n != MARKER and n not in listed]
    if foreign and not force:
        raise OutFolderError(f"{folder}: a pvtime results folder that also holds files pvtime did not write "
                             f"({', '.join(foreign)}): move them, or pass --force to delete them with the results")


def claim(folder: Path, *, force: bool = False) -> None:
    """Make `folder` an empty results folder holding only the marker (after `check`)."""
    check(folder, force=force)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / MARKER).write_text(_HEADER, encoding="utf-8")


def seal(folder: Path, names: Iterable[str]) -> Path:
    """Rewrite the marker with the names of the files the run wrote; return its path."""
    marker = folder / MARKER
    marker.write_text(_HEADER + "".join(f"{n}\n" for n in sorted(names)), encoding="utf-8")
    return marker


def _unmarked_results(names: list[str]) -> bool:
    return "summary.json" in names and all(
        n in _UNMARKED or (n.startswith("console-") and n.endswith(".txt")) for n in names)


def _listed(marker: Path) -> set[str]:
    try:
        lines = marker.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return set()
    return {line for line in lines[1:] if line}
