"""What a run records as it goes: CPU occupancy, per-vCPU steal as each side sees it, and trace
events (scheduling, wake-ups, hypercalls) in the Chrome/Perfetto JSON event format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


# The series columns of a vCPU's steal, in order: the host's truth two ways, the record, the guest.
STEAL_COLUMNS = ("host_wait_ns", "host_run_delay_ns", "record_steal_ns", "guest_steal_ns")


@dataclass(frozen=True, slots=True)
class StealReading:
    """One vCPU's steal at one instant, as each side sees it (what a run stopped then reports)."""

    host: str  # the host its VM is on
    ran: bool  # its thread has run, on any host
    pv_time_st_calls: int  # successful PV_TIME_ST calls of its guest so far (each restarts the counts)
    wait_ns: int  # host truth, each wait counted as it passes (a wait in progress included)
    run_delay_ns: int  # host truth as of its latest guest entry, where KVM adds run_delay to the record
    record_ns: int | None  # the stolen-time record (None: no PV time)
    guest_ns: int | None  # the guest's accounted steal (None: not known)

    def series_values(self) -> tuple[int | None, ...]:
        """The values of `STEAL_COLUMNS`, with the gaps the series shows as null: everything before
        the vCPU first ran; the record before the guest's first PV_TIME_ST (it reads no record yet)."""
        if not self.ran:
            return (None,) * len(STEAL_COLUMNS)
        record = self.record_ns if self.pv_time_st_calls else None
        return (self.wait_ns, self.run_delay_ns, record, self.guest_ns)


class StealProbe(Protocol):
    """How to read one vCPU's steal (`sim.observe.VcpuProbe`) while its VM runs on one host; a
    migration registers the probe of the vCPU's new thread under the same key."""

    key: str  # "vm/vcpuN"

    def read(self, now_ns: int) -> StealReading:
        """The vCPU's steal at `now_ns`, as a run stopped then reports it (read once the run is over)."""
        ...


class Recorder:
    """A `SchedObserver` that bins CPU time, keeps each vCPU's steal probes (read at every sample
    time once the run is over), and keeps trace events."""

    def __init__(self, hosts: list[Host], duration_ns: int, sample_ns: int, *, trace: bool) -> None:
        self.duration_ns = duration_ns
        self.sample_ns = sample_ns
        self.nbins = -(-duration_ns // sample_ns)
        self.pid = {h.name: i + 1 for i, h in enumerate(hosts)}
        self.busy = {h.name: np.zeros((h.ncpus, len(CATEGORIES), self.nbins), dtype=np.int64) for h in hosts}
        self.category: dict[tuple[str, int], int] = {}
        # "vm/vcpuN" -> its probes in the order they were registered, each with when (None: before the run)
        self.probes: dict[str, list[tuple[int | None, StealProbe]]] = {}
        self.trace = trace
        self.events: list[dict[str, Any]] = []
        self.hypercalls = 0

    def register(self, host: Host, task: Task, category: str, probe: StealProbe | None = None, *,
                 at_ns: int | None = None) -> None:
        """Declare a task's category (and, for a vCPU thread, how to read its vCPU's steal from
        just after `at_ns` on: a migration's switch-over; None: from the start)."""
        self.category[(host.name, task.tid)] = CATEGORIES.index(category)
        if probe is not None:
            self.probes.setdefault(probe.key, []).append((at_ns, probe))

    def grid(self, end_ns: int) -> list[int]:
        """The sample times of a run that ends at `end_ns`: 0, sample, 2 sample, ..., end."""
        return [*range(0, end_ns, self.sample_ns), end_ns]

    def probe_at(self, key: str, t_ns: int) -> StealProbe:
        """The probe that reads vCPU `key` at `t_ns` (the last one registered before it)."""
        current = [probe for at, probe in self.probes[key] if at is None or at < t_ns]
        if not current:
            raise ValueError(f"{key} has no steal probe before {t_ns} ns")
        return current[-1]

    # --- SchedObserver ---------------------------------------------------------------------

    def on_segment(self, host: Host, cpu: int, task: Task, start_ns: int, end_ns: int,
                   switched_in: bool) -> None:
        key = (host.name, task.tid)
        cat = self.category.get(key, 2)
        busy = self.busy[host.name]
        s, size = start_ns, self.sample_ns
        while s < end_ns:
            b = s // size
            if b >= self.nbins:
                break
            e = (b + 1) * size
            if e > end_ns:
                e = end_ns
            busy[cpu, cat, b] += e - s
            s = e
        if self.trace and end_ns > start_ns:  # an empty slice is no slice
            pid = self.pid[host.name]
            ts, dur = trace_us(start_ns), trace_us(end_ns - start_ns)
            self.events.append({"ph": "X", "cat": "sched", "name": f"cpu{cpu}", "pid": pid, "tid": task.tid,
                                "ts": ts, "dur": dur, "args": {"cpu": cpu, "switched_in": switched_in}})
            self.events.append({"ph": "X", "cat": "sched", "name": task.name, "pid": pid,
                                "tid": CPU_TRACK_BASE + cpu, "ts": ts, "dur": dur, "args": {"tid": task.tid}})

    def on_wake(self, host: Host, task: Task, at_ns: int, cpu: int) -> None:
        if self.trace:
            self.events.append({"ph": "i", "s": "t", "cat": "sched", "name": "wake",
                                "pid": self.pid[host.name], "tid": task.tid, "ts": trace_us(at_ns),
                                "args": {"cpu": cpu}})

    # --- hypercalls ----------------------------------------------------------------------

    def on_hypercall(self, host: Host, task: Task, at_ns: int, event: HypercallEvent) -> None:
        """A vCPU made an SMCCC call (KVM's kvm_hvc_arm64 tracepoint)."""
        self.hypercalls += 1
        if self.trace:
            fid = event.function_id
            self.events.append({"ph": "i", "s": "t", "cat": "hypercall", "name": hypercall_name(fid),
                                "pid": self.pid[host.name], "tid": task.tid, "ts": trace_us(at_ns),
                                "args": {"fid": f"{fid:#010x}", "x0": f"{event.results[0]:#x}"}})

    # --- results -------------------------------------------------------------------------

    def series(self, key: str, times: list[int]) -> dict[str, np.ndarray]:
        """A vCPU's steal at each of `times`: `host` and `pv_time_st_calls`, then `STEAL_COLUMNS` as
        int64 masked arrays (masked: a gap, see `StealReading.series_values`)."""
        readings = [self.probe_at(key, t).read(t) for t in times]
        values = [r.series_values() for r in readings]
        out: dict[str, np.ndarray] = {
            "host": np.array([r.host for r in readings], dtype=object),
            "pv_time_st_calls": np.array([r.pv_time_st_calls for r in readings], dtype=np.int64),
        }
        for i, col in enumerate(STEAL_COLUMNS):
            column = [v[i] for v in values]
            out[col] = np.ma.masked_array([0 if v is None else v for v in column],
                                          mask=[v is None for v in column], dtype=np.int64)
        return out


def trace_us(ns: int) -> int | float:
    """Integer ns as the trace format's microseconds, exactly: an integer when whole, else the
    float whose shortest repr (what JSON writes) is the 3-decimal value, for any time below 2**42 us
    (51 days), where a double's spacing is under 1 ns."""
    return ns // 1000 if ns % 1000 == 0 else ns / 1000
