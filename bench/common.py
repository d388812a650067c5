"""What every benchmark shares: the machine's CPU model and load, and a best-of-N rate measurement.

Wall clock (perf_counter) is allowed in bench/ only; nothing here asserts on time.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


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
