"""`provenance.json`: what made a results folder -- pvtime's version (and its git checkout), Python,
the platform, the dependencies that shape results, the scenario exactly as run, the command line
and the wall-clock time.

It is the one results file outside the byte-identity promise: it records facts of the machine and
the moment (versions, a date, wall-clock seconds), which the results themselves never depend on.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pvtime.sim.scenario import Scenario

FILE = "provenance.json"

# The distributions whose versions can change results: the CPU engine and the ELF loader (guest
# execution), the disassembler (diagnostics in the results), numpy (series), matplotlib (figures),
# pyarrow (Parquet).
DEPENDENCIES = ("unicorn", "capstone", "pyelftools", "numpy", "matplotlib", "pyarrow")


def provenance(scenario: Scenario, *, argv: list[str], started: datetime, wall_s: float,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance of a run of `scenario` begun at `started` (UTC) that took `wall_s` seconds."""
    text = scenario.text
    return {
        "pvtime": {"version": _version("pvtime"), "git_describe": git_describe()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "platform": platform.platform()},
        "dependencies": {name: _version(name) for name in DEPENDENCIES},
        "scenario": {
            "source": scenario.source,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "text": text,
            "overrides": overrides or {},
            # every field with its value as run, defaults included: the run again, whatever
            # later versions take as defaults
            "resolved": scenario.spec.model_dump(mode="json"),
        },
        "command_line": list(argv),
        "started_utc": started.astimezone(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_s, 3),
    }


def now_utc() -> datetime:
    """The wall-clock time now (for `started`)."""
    return datetime.now(UTC)


def git_describe() -> str | None:
    """`git describe --always --dirty` of the checkout pvtime runs from; None when it is not run
    from a checkout (an installed package), or git is missing."""
    package = Path(__file__).resolve().parents[1]  # src/pvtime
    try:
        top = _git(package, "rev-parse", "--show-toplevel")
        # pvtime installed into a folder that happens to lie in another repository is no checkout of it
        if top is None or (Path(top) / "src" / "pvtime").resolve() != package:
            return None
        return _git(package, "describe", "--always", "--dirty")
    except (OSError, subprocess.SubprocessError):
        return None


def _git(cwd: Path, *args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
