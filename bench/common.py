"""What every benchmark shares: the machine's CPU model and load, a best-of-N rate measurement,
and the baseline commit checked out in a git worktree, measured in a subprocess.

Wall clock (perf_counter) is allowed in bench/ only; nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    """One line naming the machine the figures were measured on."""
    return f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def rate(fn: Callable[[int], object], inputs: list[int], repeat: int) -> float:
    """Best-of-``repeat`` calls per second of ``fn`` over ``inputs``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for t in inputs:
            fn(t)
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


def loadavg() -> str:
    """The machine's background load: /proc/loadavg (1, 5, 15 min averages, running/total tasks)."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unavailable"


def git(*args: str, cwd: Path = ROOT) -> str:
    """Run git in `cwd` (the repository by default); its stdout, stripped."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def baseline_worktree(commit: str, user: str = "") -> Iterator[Path]:
    """`commit` checked out in a temporary worktree (an existing one at that commit is reused);
    benches that may run at the same time name themselves (`user`), so they get one each."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"pvtime-bench-{commit}{'-' + user if user else ''}"
    registered = f"worktree {path}" in git("worktree", "list", "--porcelain").splitlines()
    reuse = registered and path.is_dir() and _head(path) == sha
    if not reuse:
        if registered and path.is_dir():
            git("worktree", "remove", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune")
        git("worktree", "add", "--detach", str(path), sha)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", str(path))
        git("worktree", "prune")


def _head(path: Path) -> str | None:
    try:
        return git("rev-parse", "HEAD", cwd=path)
    except subprocess.CalledProcessError:
        return None


def spawn(script: str, src: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run `script --worker JOB` in a fresh interpreter with `src` first on its path; the JSON
    object on its last line of output. An answer naming the `pvtime` it imported (key "pvtime")
    must name the tree under `src`."""
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {job} under {src} failed:\n{proc.stderr}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if "pvtime" in out and not Path(out["pvtime"]).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"measurement {job} imported {out['pvtime']}, not the tree under {src}")
    return out


def describe_tree() -> str:
    """This tree's commit, and whether src/ has uncommitted changes."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "src")
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"
