"""What a scenario run gives a report: a row per vCPU, host task, VM, migration and guest clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.sim.scenario_schema import ScenarioSpec
from pvtime.vmm import StopReason


@dataclass(frozen=True)
class VcpuRow:
    """One vCPU's steal at the end of the run, as the host and the guest see it."""

    host: str
    vm: str
    vcpu: int
    task: str
    tid: int
    pvtime: bool
    guest: str
    # run_delay growth of its thread since the baseline KVM uses -- the guest's last PV_TIME_ST
    # (which zeroes the record), else its first vcpu_load -- up to its last guest entry before
    # its VM stopped (waits after that are no VM's steal): the host's truth.
    host_run_delay_ns: int
    record_steal_ns: int | None  # the stolen-time record, what the guest's steal clock reads
    guest_steal_ns: int | None  # the guest kernel's cpustat[STEAL] (ns)
    proc_stat_steal: int | None  # the same in /proc/stat units (USER_HZ)
    elapsed_ns: int  # from its first run to the end (of the run, or of its VM)
    run_time_ns: int
    timeslices: int
    vcpu_loads: int
    proc_stat_total: int | None = None  # the sum of its /proc/stat cpu line, for a guest that prints it
    guest_note: str | None = None  # why there is no guest steal, when there is none
    # The host's truth with each wait counted as it passes, up to the end or its VM's end: at
    # least host_run_delay_ns, by a wait in progress or the waits after its last guest entry.
    host_wait_ns: int = 0
    pv_time_st_calls: int = 0  # successful PV_TIME_ST calls of its guest (each restarts the counts)
    first_run_ns: int | None = None  # when its thread first ran (None: it has not run)

    @property
    def steal_pct(self) -> float | None:
        """/proc/stat steal as a share of the vCPU's time: of its /proc/stat line's total when the
        guest printed one (as top and vmstat compute it), else of its elapsed time."""
        if self.proc_stat_steal is None:
            return None
        if self.proc_stat_total:
            return 100.0 * self.proc_stat_steal / self.proc_stat_total
        if self.elapsed_ns <= 0:
            return None
        return 100.0 * self.proc_stat_steal * (NSEC_PER_SEC // USER_HZ) / self.elapsed_ns

    @property
    def record_minus_host_ns(self) -> int | None:
        """What the guest's steal clock reads minus the host's truth (0 when exact)."""
        return None if self.record_steal_ns is None else self.record_steal_ns - self.host_run_delay_ns

    @property
    def proc_stat_minus_host_ns(self) -> int | None:
        """The guest's accounted steal minus the host's truth (the tick lag, and all of it without PV time)."""
        return None if self.guest_steal_ns is None else self.guest_steal_ns - self.host_run_delay_ns


@dataclass(frozen=True)
class TaskRow:
    """One host task's /proc/<tid>/schedstat at the end."""

    host: str
    name: str
    tid: int
    kind: str
    run_time_ns: int
    run_delay_ns: int
    timeslices: int


@dataclass(frozen=True)
class VmRow:
    """How a VM ended."""

    host: str
    name: str
    guest: str  # "model", or "elf:<image name or path>"
    stopped: StopReason | None
    proc_stat: str
    console: str
    stopped_ns: int | None = None  # virtual time at which it stopped
    exit_status: int | None = None  # the guest's semihosting exit status, if it exited that way


class MigrationStatus(Enum):
    """Where a [[migration]] got to by the end of the run."""

    NOT_REACHED = "not reached"  # its time did not come
    IN_PROGRESS = "in progress"
    DONE = "done"
    ERROR = "error"  # the destination refused it: the VM kept running on the source


@dataclass(frozen=True)
class MigrationRow:
    """One [[migration]] at the end of the run; the counters once it has begun."""

    vm: str
    to: str
    at_ms: int
    status: MigrationStatus
    error: str | None = None
    from_host: str | None = None
    rounds: int | None = None  # pre-copy rounds
    pages: tuple[int, ...] | None = None  # pages sent in each part (the final one last)
    bytes: int | None = None
    downtime_ns: int | None = None  # from the source's last guest instruction to the restore

    def to_dict(self) -> dict[str, Any]:
        """The row in summary.json (the counters only once the migration has begun)."""
        row: dict[str, Any] = {"vm": self.vm, "to": self.to, "at_ms": self.at_ms, "status": self.status.value}
        if self.status is MigrationStatus.NOT_REACHED:
            return row
        return {**row, "error": self.error, "from": self.from_host, "rounds": self.rounds, "pages": None if self.pages is None else list(self.pages),
                "bytes": self.bytes, "downtime_ns": self.downtime_ns}


@dataclass(frozen=True)
class ClockRow:
    """A model guest's clock (its clocksource, the PV counter with LPT) against virtual time at
    its ticks, and how late its tick interrupts were."""

    clocksource: str | None
    freq: int | None
    timer_early: int  # timer interrupts taken before their deadline
    # (virtual ns, guest clock minus virtual ns, timer lateness ns) at every guest tick
    samples: tuple[tuple[int, int, int], ...]

    @property
    def errors(self) -> list[int]:
        """The guest clock minus virtual time at each tick."""
        return [e for _, e, _ in self.samples]

    @property
    def lateness(self) -> list[int]:
        """How late each tick's timer interrupt was."""
        return [x for _, _, x in self.samples]

    @property
    def error_min_ns(self) -> int | None:
        return min(self.errors, default=None)

    @property
    def error_max_ns(self) -> int | None:
        return max(self.errors, default=None)

    @property
    def lateness_max_ns(self) -> int | None:
        return max(self.lateness, default=None)

    def to_dict(self) -> dict[str, Any]:
        """The row in summary.json."""
        errors, late = self.errors, self.lateness
        return {"clocksource": self.clocksource, "freq": self.freq,
                "ticks": len(errors), "error_first_ns": errors[0] if errors else None,
                "error_last_ns": errors[-1] if errors else None,
                "error_min_ns": self.error_min_ns, "error_max_ns": self.error_max_ns,
                "timer_early": self.timer_early, "lateness_max_ns": self.lateness_max_ns,
                "lateness_mean_ns": sum(late) // len(late) if late else None,
                "samples": [list(s) for s in self.samples]}


@dataclass
class RunResult:
    """Everything a report needs."""

    spec: ScenarioSpec
    source: str
    duration_ns: int
    vcpus: list[VcpuRow]
    tasks: list[TaskRow]
    vms: list[VmRow]
    grid_ns: np.ndarray  # the sample times
    # "vm/vcpuN" -> column -> its value at each sample time: "host" (str), "pv_time_st_calls", and
    # the steal columns (recorder.STEAL_COLUMNS) as int64 masked arrays, masked where they have no value
    series: dict[str, dict[str, np.ndarray]]
    occupancy: dict[tuple[str, int], np.ndarray]  # (host, cpu) -> (categories, bins) busy ns
    trace_events: list[dict[str, Any]]
    host_pids: dict[str, int]
    task_names: dict[tuple[int, int], str]  # (pid, tid) -> name
    host_cpus: dict[str, int]
    stats: dict[str, int] = field(default_factory=dict)
    migrations: list[MigrationRow] = field(default_factory=list)  # one row per [[migration]]
    clocks: dict[str, ClockRow] = field(default_factory=dict)  # model-guest VM -> its clock vs ideal
