"""What a run records as it goes: CPU occupancy, per-vCPU steal as each side sees it, and trace
events (scheduling, wake-ups, hypercalls) in the Chrome/Perfetto JSON event format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pvtime.abi import smccc
from pvtime.host import Host, Task
from pvtime.kvm import HypercallEvent

CATEGORIES = ("vcpu", "vmm", "noise")
CPU_TRACK_BASE = 1_000_000  # tids of the per-CPU tracks in the trace, above any task id

_HYPERCALL_NAMES = {
    smccc.SMCCC_VERSION: "SMCCC_VERSION", smccc.SMCCC_ARCH_FEATURES: "SMCCC_ARCH_FEATURES",
    smccc.PV_TIME_FEATURES: "PV_TIME_FEATURES", smccc.PV_TIME_ST: "PV_TIME_ST",
    smccc.PV_TIME_LPT: "PV_TIME_LPT", smccc.PSCI_VERSION: "PSCI_VERSION",
    smccc.PSCI_CPU_ON: "PSCI_CPU_ON", smccc.PSCI_CPU_OFF: "PSCI_CPU_OFF",
    smccc.PSCI_AFFINITY_INFO: "PSCI_AFFINITY_INFO", smccc.PSCI_SYSTEM_OFF: "PSCI_SYSTEM_OFF",
    smccc.PSCI_SYSTEM_RESET: "PSCI_SYSTEM_RESET", smccc.PSCI_FEATURES: "PSCI_FEATURES",
}


def hypercall_name(fid: int) -> str:
    """A readable name for an SMCCC function id."""
    return _HYPERCALL_NAMES.get(fid, f"SMCCC {fid:#010x}")


@dataclass
class VcpuProbe:
    """How to read one vCPU's steal: host truth, the record, and the guest's accounted steal."""

    key: str  # "vm/vcpuN"
    truth: Callable[[], int]
    record: Callable[[], int | None]
    guest: Callable[[], int | None]
    times: list[int] = field(default_factory=list)
    truth_v: list[int] = field(default_factory=list)
    record_v: list[int] = field(default_factory=list)
    guest_t: list[int] = field(default_factory=list)
    guest_v: list[int] = field(default_factory=list)
    st_baseline_ns: int | None = None  # run_delay at the guest's last PV_TIME_ST (KVM's baseline)
    entry_run_delay: int | None = None  # run_delay at the vCPU's latest guest entry (a vcpu_load)
    # The guest view before its first value: 0 for a guest that accounts from the start, -1 (not
    # known) for one whose steal is known only once it prints it.
    guest_before: int = 0


class Recorder:
    """A `SchedObserver` that bins CPU time and samples steal at every vCPU segment."""

    def __init__(self, hosts: list[Host], duration_ns: int, sample_ns: int, *, trace: bool) -> None:
        self.duration_ns = duration_ns
        self.sample_ns = sample_ns
        self.nbins = -(-duration_ns // sample_ns)
        self.pid = {h.name: i + 1 for i, h in enumerate(hosts)}
        self.busy = {h.name: np.zeros((h.ncpus, len(CATEGORIES), self.nbins), dtype=np.int64) for h in hosts}
        self.category: dict[tuple[str, int], int] = {}
        self.probes: dict[tuple[str, int], VcpuProbe] = {}
        self.trace = trace
        self.events: list[dict[str, Any]] = []
        self.hypercalls = 0

    def register(self, host: Host, task: Task, category: str, probe: VcpuProbe | None = None) -> None:
        """Declare a task's category (and, for a vCPU thread, how to read its steal)."""
        self.category[(host.name, task.tid)] = CATEGORIES.index(category)
        if probe is not None:
            self.probes[(host.name, task.tid)] = probe

    # --- SchedObserver ---------------------------------------------------------------------

    def on_segment(self, host: Host, cpu: int, task: Task, start_ns: int, end_ns: int,
                   switched_in: bool) -> None:
        key = (host.name, task.tid)
        cat = self.category.get(key, 2)
        row = self.busy[host.name][cpu, cat]
        s, size = start_ns, self.sample_ns
        while s < end_ns:
            b = s // size
            if b >= self.nbins:
                break
            e = min(end_ns, (b + 1) * size)
            row[b] += e - s
            s = e
        probe = self.probes.get(key)
        if probe is not None:
            rec = probe.record()
            probe.times.append(start_ns)
            probe.truth_v.append(probe.truth())
            probe.record_v.append(-1 if rec is None else rec)
            g = probe.guest()
            if g is not None:
                probe.guest_t.append(end_ns)
                probe.guest_v.append(g)
        if self.trace:
            pid = self.pid[host.name]
            args = {"cpu": cpu, "switched_in": switched_in}
            self.events.append({"ph": "X", "cat": "sched", "name": f"cpu{cpu}", "pid": pid,
                                "tid": task.tid, "ts": start_ns / 1000, "dur": (end_ns - start_ns) / 1000,
                                "args": args})
            self.events.append({"ph": "X", "cat": "sched", "name": task.name, "pid": pid,
                                "tid": CPU_TRACK_BASE + cpu, "ts": start_ns / 1000,
                                "dur": (end_ns - start_ns) / 1000, "args": {"tid": task.tid}})

    def on_wake(self, host: Host, task: Task, at_ns: int, cpu: int) -> None:
        if self.trace:
            self.events.append({"ph": "i", "s": "t", "cat": "sched", "name": "wake",
                                "pid": self.pid[host.name], "tid": task.tid, "ts": at_ns / 1000,
                                "args": {"cpu": cpu}})

    # --- hypercalls ----------------------------------------------------------------------

    def on_hypercall(self, host: Host, task: Task, at_ns: int, event: HypercallEvent) -> None:
        """A vCPU made an SMCCC call (KVM's kvm_hvc_arm64 tracepoint)."""
        self.hypercalls += 1
        if self.trace:
            fid = event.function_id
            self.events.append({"ph": "i", "s": "t", "cat": "hypercall", "name": hypercall_name(fid),
                                "pid": self.pid[host.name], "tid": task.tid, "ts": at_ns / 1000,
                                "args": {"fid": f"{fid:#010x}", "x0": f"{event.results[0]:#x}"}})

    # --- results -------------------------------------------------------------------------

    def grid(self) -> np.ndarray:
        """Sample times (ns): 0, sample, ..., duration."""
        return np.append(np.arange(0, self.duration_ns, self.sample_ns, dtype=np.int64), self.duration_ns)

    def sampled(self, probe: VcpuProbe) -> dict[str, np.ndarray]:
        """The vCPU's three steal views on the grid (last value at or before each sample)."""
        g = self.grid()
        return {
            "host_run_delay_ns": _step(probe.times, probe.truth_v, g),
            "record_steal_ns": _step(probe.times, probe.record_v, g, missing=-1),
            "guest_steal_ns": _step(probe.guest_t, probe.guest_v, g, missing=-1 if not probe.guest_v else 0,
                                    before=probe.guest_before),
        }


def _step(ts: list[int], vs: list[int], grid: np.ndarray, missing: int = 0, before: int = 0) -> np.ndarray:
    """The last value at or before each grid time; `before` ahead of the first, `missing` if none."""
    if not ts:
        return np.full(len(grid), missing, dtype=np.int64)
    t = np.asarray(ts, dtype=np.int64)
    v = np.asarray(vs, dtype=np.int64)
    idx = np.searchsorted(t, grid, side="right") - 1
    out = np.where(idx >= 0, v[np.clip(idx, 0, None)], before)
    return out.astype(np.int64)
