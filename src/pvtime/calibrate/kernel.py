"""The running kernel as the simulator needs it, and what else disturbed a measurement.

`read_kernel` reads the release (/proc/sys/kernel/osrelease), HZ (CONFIG_HZ in /proc/config.gz),
the fair policy (EEVDF from Linux 6.6, CFS before), the preemption mode and the CPU count; any of
them can be given instead (`overrides`), and each field records where it came from. Whether the
simulator accepts the values is `pvtime.host.SchedConfig`'s to say. The
preemption mode comes from, in order: /sys/kernel/debug/sched/preempt (the bracketed entry),
``preempt=`` on /proc/cmdline (PREEMPT_DYNAMIC), the CONFIG_PREEMPT_* default of the config.

`CpuTimes` samples /proc/stat: per CPU busy and steal time (USER_HZ ticks, 100 per second), so a
measurement can say how much the machine's own hypervisor stole, and how much CPU other processes
used, on the CPUs it ran on.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ

USER_HZ_NS = NSEC_PER_SEC // USER_HZ  # /proc/stat's unit
_CONFIG_PREEMPT = {"CONFIG_PREEMPT_NONE": "none", "CONFIG_PREEMPT_VOLUNTARY": "voluntary",
                   "CONFIG_PREEMPT": "full", "CONFIG_PREEMPT_LAZY": "lazy"}


class KernelReadError(Exception):
    """A kernel property could not be read and was not given."""


@dataclass(frozen=True)
class KernelInfo:
    """What the simulator is configured from, and where each value came from (`sources`)."""

    release: str
    hz: int
    policy: str
    preempt: str
    cpus: int
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``Linux 6.18.44, eevdf, HZ=250, preempt=none, 2 CPUs``."""
        return f"Linux {self.release}, {self.policy}, HZ={self.hz}, preempt={self.preempt}, {self.cpus} CPUs"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"release": self.release, "hz": self.hz, "policy": self.policy, "preempt": self.preempt,
                "cpus": self.cpus, "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelInfo:
        """Read the JSON form (KeyError / ValueError when malformed)."""
        return cls(str(d["release"]), int(d["hz"]), str(d["policy"]), str(d["preempt"]), int(d["cpus"]),
                   {str(k): str(v) for k, v in d.get("sources", {}).items()})

    def overridden(self, overrides: dict[str, Any]) -> KernelInfo:
        """This kernel with some fields given on the command line (None: keep)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        fields = self.to_dict() | given
        if "release" in given and "policy" not in given:
            fields["policy"] = policy_for_release(given["release"])
            given["policy"] = fields["policy"]
        fields["sources"] = self.sources | {k: "override" for k in given}
        return KernelInfo.from_dict(fields)


def policy_for_release(release: str) -> str:
    """``eevdf`` for Linux >= 6.6 (EEVDF replaced CFS in 6.6), else ``cfs``."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        raise KernelReadError(f"cannot tell the version of kernel release {release!r}")
    return "eevdf" if (int(m[1]), int(m[2])) >= (6, 6) else "cfs"


def read_config(path: Path = Path("/proc/config.gz")) -> dict[str, str]:
    """The kernel config as NAME -> value (``y``, ``250``, ...); empty when unreadable."""
    try:
        text = gzip.decompress(path.read_bytes()).decode(errors="replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)


def _preempt(config: dict[str, str], proc: Path, sys_debug: Path) -> tuple[str | None, str]:
    try:
        m = re.search(r"\((\w+)\)", sys_debug.read_text())  # "none (voluntary) full lazy"
        if m:
            return m[1], "debugfs sched/preempt"
    except OSError:
        pass
    try:
        m = re.search(r"(?:^|\s)preempt=(\w+)", (proc / "cmdline").read_text())
        if m:
            return m[1], "preempt= on the cmdline"
    except OSError:
        pass
    for name, mode in _CONFIG_PREEMPT.items():
        if config.get(name) == "y":
            return mode, f"{name}=y"
    return None, "unknown"


def read_kernel(overrides: dict[str, Any] | None = None, *, proc: Path = Path("/proc"),
                sys_debug: Path = Path("/sys/kernel/debug/sched/preempt")) -> KernelInfo:
    """The running kernel, with `overrides` (field -> value, None: read it) applied."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    try:
        values["release"] = (proc / "sys/kernel/osrelease").read_text().strip()
        sources["release"] = "osrelease"
    except OSError:
        values["release"] = "unknown"
        sources["release"] = "unknown"
    config = read_config(proc / "config.gz")
    if "CONFIG_HZ" in config:
        values["hz"], sources["hz"] = int(config["CONFIG_HZ"]), "CONFIG_HZ"
    if values["release"] != "unknown":
        values["policy"] = policy_for_release(values["release"])
        sources["policy"] = "release; EEVDF from 6.6"
    mode, sources["preempt"] = _preempt(config, proc, sys_debug)
    if mode is not None:
        values["preempt"] = mode
    values["cpus"], sources["cpus"] = os.cpu_count() or 1, "online CPUs"
    values |= given
    sources |= {k: "override" for k in given}
    missing = [k for k in ("hz", "policy", "preempt") if k not in values]
    if missing:
        raise KernelReadError(f"could not read the kernel's {', '.join(missing)}: give "
                              + ", ".join(f"--{k}" for k in missing))
    return KernelInfo(values["release"], int(values["hz"]), values["policy"], values["preempt"],
                      int(values["cpus"]), sources)


def loadavg(proc: Path = Path("/proc")) -> list[float]:
    """The 1, 5 and 15 minute load averages ([] when unreadable)."""
    try:
        return [float(x) for x in (proc / "loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def autogroup(proc: Path = Path("/proc")) -> str | None:
    """This process's autogroup (``/autogroup-4 nice 0``), which its children share; None without."""
    try:
        return (proc / "self/autogroup").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class CpuTimes:
    """One /proc/stat sample: per CPU, busy time (user, nice, system, irq, softirq) and steal, ns."""

    busy_ns: dict[int, int]
    steal_ns: dict[int, int]
    machine_steal_ns: int

    @classmethod
    def sample(cls, proc: Path = Path("/proc")) -> CpuTimes:
        """Read /proc/stat now."""
        busy: dict[int, int] = {}
        steal: dict[int, int] = {}
        machine = 0
        for line in (proc / "stat").read_text().splitlines():
            if not line.startswith("cpu"):
                continue
            name, *fields = line.split()
            v = [int(x) for x in fields] + [0] * 8
            # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
            if name == "cpu":
                machine = v[7] * USER_HZ_NS
                continue
            cpu = int(name[3:])
            busy[cpu] = (v[0] + v[1] + v[2] + v[5] + v[6]) * USER_HZ_NS
            steal[cpu] = v[7] * USER_HZ_NS
        return cls(busy, steal, machine)

    def busy_since(self, earlier: CpuTimes, cpus: list[int]) -> int:
        """CPU time used on `cpus` since `earlier` (ns, at USER_HZ resolution)."""
        return sum(self.busy_ns.get(c, 0) - earlier.busy_ns.get(c, 0) for c in cpus)

    def steal_since(self, earlier: CpuTimes, cpus: list[int] | None = None) -> int:
        """Steal on `cpus` (None: the whole machine) since `earlier` (ns, at USER_HZ resolution)."""
        if cpus is None:
            return self.machine_steal_ns - earlier.machine_steal_ns
        return sum(self.steal_ns.get(c, 0) - earlier.steal_ns.get(c, 0) for c in cpus)


def least_busy_cpus(n: int, allowed: list[int], sample_s: float = 0.1) -> list[int]:
    """The `n` CPUs of `allowed` that were busiest least over the next `sample_s` (ties: lowest id)."""
    import time

    if n >= len(allowed):
        return sorted(allowed)
    before = CpuTimes.sample()
    time.sleep(sample_s)
    after = CpuTimes.sample()
    use = {c: after.busy_since(before, [c]) + after.steal_since(before, [c]) for c in allowed}
    return sorted(sorted(allowed, key=lambda c: (use[c], c))[:n])
