"""The scenario file's schema: hosts, VMs, guests, noise and migrations, as pydantic models.

Each field says its type, default and range; a model validator checks what one spec holds alone.
Reading a file, the checks across specs and the errors naming file, line and field are
`pvtime.sim.scenario`'s.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pvtime.abi.widths import U32
from pvtime.cpu import CpuKind
from pvtime.host.sched_config import CfsTunables, EevdfTunables, SchedConfig
from pvtime.vmm.images import PACKAGE_IMAGES

# The scenario format this pvtime reads (a file's optional top-level `format = N` names the one it
# was written for). Raise it when a file of the new format would be misread by an older pvtime.
SCENARIO_FORMAT = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedSpec(_Strict):
    """A host's scheduler: Linux's fair policy, HZ, preemption model, and that policy's tunables
    (before Linux's CPU-count scaling). Unset tunables take Linux's defaults."""

    policy: Literal["eevdf", "cfs"] = "eevdf"
    hz: Literal[100, 250, 300, 1000] = 250
    preempt: Literal["none", "voluntary", "full", "lazy"] = "voluntary"
    base_slice_us: int | None = Field(None, gt=0)  # eevdf: sysctl_sched_base_slice
    latency_us: int | None = Field(None, gt=0)  # cfs: sysctl_sched_latency
    min_granularity_us: int | None = Field(None, gt=0)  # cfs
    wakeup_granularity_us: int | None = Field(None, gt=0)  # cfs

    def config(self) -> SchedConfig:
        """The host scheduler's configuration."""
        us = 1000
        e, c = EevdfTunables(), CfsTunables()
        eevdf = EevdfTunables(self.base_slice_us * us) if self.base_slice_us is not None else e
        cfs = CfsTunables(
            self.latency_us * us if self.latency_us is not None else c.latency_ns,
            self.min_granularity_us * us if self.min_granularity_us is not None else c.min_granularity_ns,
            self.wakeup_granularity_us * us if self.wakeup_granularity_us is not None else c.wakeup_granularity_ns)
        return SchedConfig(self.policy, self.hz, self.preempt, eevdf, cfs)


class HostSpec(_Strict):
    """A physical machine."""

    name: str = Field(min_length=1)
    cpus: int = Field(ge=1, le=4096)
    counter_hz: int = Field(25_000_000, ge=1, le=U32)
    schedstats: bool = True
    sched: SchedSpec = SchedSpec()


class ModelGuestSpec(_Strict):
    """The Python model Linux guest: a 250 Hz tick and busy/idle periods per vCPU."""

    kind: Literal["model"]
    cpu: ClassVar[CpuKind] = CpuKind.MODEL  # the vCPUs the VMM gives it
    busy_us: tuple[int, int] = (2000, 12000)
    idle_us: tuple[int, int] = (0, 0)
    hz: int = Field(250, ge=1, le=10000)
    steal_acc: bool = True
    nohz_idle: bool = True  # arm64 Linux's NO_HZ_IDLE; false: a periodic tick through idle

    @model_validator(mode="after")
    def _ranges(self) -> ModelGuestSpec:
        for name in ("busy_us", "idle_us"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]")
        if self.busy_us[1] == 0:
            raise ValueError("busy_us must allow some work (high > 0)")
        return self


class ElfGuestSpec(_Strict):
    """A freestanding AArch64 ELF run on the unicorn CPU backend: a packaged image, or a file.

    `duration_ms`, `busy_ms` and `idle_ms` set the image's `minikernel_config` block (counter-time
    ms of its workload, its busy and idle periods) and need an image that has one; unset, the
    image's own values stay. `path` is relative to the scenario file.
    """

    kind: Literal["elf"]
    cpu: ClassVar[CpuKind] = CpuKind.UNICORN  # the vCPUs the VMM gives it
    image: Literal["conformance", "minikernel"] | None = None
    path: str | None = None
    duration_ms: int | None = Field(None, gt=0, le=3_600_000)
    busy_ms: int | None = Field(None, gt=0, le=3_600_000)
    idle_ms: int | None = Field(None, ge=0, le=3_600_000)
    # The guest's speed. Its arithmetic is in counter time, so this changes how many instructions
    # a busy period takes (and the wall time of a run), not the steal it sees.
    instructions_per_sec: int = Field(1_000_000_000, ge=1_000, le=100_000_000_000)

    @model_validator(mode="after")
    def _one_source(self) -> ElfGuestSpec:
        if (self.image is None) == (self.path is None):
            raise ValueError("give exactly one of image (a packaged image: "
                             f"{', '.join(PACKAGE_IMAGES)}) or path (an ELF file)")
        return self

    def config_fields(self) -> dict[str, int]:
        """The `minikernel_config` fields the scenario sets."""
        return {k: v for k in ("duration_ms", "busy_ms", "idle_ms") if (v := getattr(self, k)) is not None}


class LinuxGuestSpec(_Strict):
    """A Linux arm64 kernel on the unicorn CPU backend, on a machine with a vGICv2 (so at most 8
    vCPUs): the packaged Linux 6.1 kernel and initramfs, or your own files (paths relative to the
    scenario file). The packaged /init keeps every CPU busy for `busy_ms`, prints /proc/stat before
    and after, and powers off; the table shows the steal of the last /proc/stat it printed.
    """

    kind: Literal["linux"]
    cpu: ClassVar[CpuKind] = CpuKind.UNICORN
    kernel: str | None = None  # an arm64 Image, raw or gzipped (default: the packaged one)
    initrd: str | None = None  # a newc cpio, gzipped or not (default: the packaged one)
    append: str = ""  # kernel command line, after console=ttyAMA0
    busy_ms: int | None = Field(None, gt=0, le=3_600_000)  # the packaged /init's pvtime.busy_ms
    instructions_per_sec: int = Field(1_000_000_000, ge=1_000, le=100_000_000_000)

    def bootargs(self) -> str:
        """The kernel command line the VMM passes."""
        busy = f"pvtime.busy_ms={self.busy_ms}" if self.busy_ms is not None else ""
        return " ".join(a for a in ("console=ttyAMA0", busy, self.append) if a)


GuestSpec = Annotated[ModelGuestSpec | ElfGuestSpec | LinuxGuestSpec, Field(discriminator="kind")]


class VmmThreadSpec(_Strict):
    """The VMM's own thread of a VM (device emulation, I/O): a periodic burst of CPU work."""

    period_us: int = Field(gt=0)
    burst_us: int = Field(gt=0)


class VmSpec(_Strict):
    """A virtual machine on one host."""

    name: str = Field(min_length=1)
    host: str
    vcpus: int = Field(1, ge=1, le=512)
    memory_mib: int = Field(64, ge=1, le=65536)
    pvtime: bool = True
    nice: int = Field(0, ge=-20, le=19)
    cpus: list[int] | None = None  # affinity of every vCPU thread
    pin: list[int] | None = None  # vCPU i's thread pinned to host CPU pin[i]
    guest: GuestSpec
    vmm_thread: VmmThreadSpec | None = None
    lpt_pv_hz: int | None = Field(None, ge=1, le=U32)  # Live Physical Time at this PV frequency


class MigrationSpec(_Strict):
    """A live migration of a VM to another host at a virtual time (pre-copy, then stop-and-copy)."""

    vm: str
    to: str
    at_ms: int = Field(ge=0)
    bandwidth_mbit: int = Field(10_000, gt=0)
    setup_us: int = Field(1000, ge=0)  # fixed switch-over cost, part of the downtime
    max_rounds: int = Field(5, ge=1, le=100)
    # A VM without LPT moved to a host of another counter frequency: its counter then runs at the
    # wrong rate (refused unless set, and flagged in the results).
    allow_frequency_change: bool = False


class NoiseSpec(_Strict):
    """Host tasks that compete with the vCPUs: CPU hogs (with a duty cycle) or periodic bursts."""

    name: str = Field(min_length=1)
    host: str
    kind: Literal["hog", "burst"] = "hog"
    count: int = Field(1, ge=1, le=4096)
    nice: int = Field(0, ge=-20, le=19)
    cpus: list[int] | None = None
    duty: float = Field(1.0, gt=0.0, le=1.0)  # hog: busy share of each period
    period_us: int = Field(10_000, gt=0)
    burst_us: int | None = Field(None, gt=0)  # burst: CPU time needed each period
    phase_us: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _burst(self) -> NoiseSpec:
        if self.kind == "burst" and self.burst_us is None:
            raise ValueError("a burst needs burst_us")
        if self.burst_us is not None and self.burst_us > self.period_us:
            raise ValueError(f"burst_us ({self.burst_us}) exceeds period_us ({self.period_us})")
        return self


class ScenarioSpec(_Strict):
    """A whole scenario."""

    format: int = Field(SCENARIO_FORMAT, ge=1)  # the scenario format the file was written for
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    duration_ms: int = Field(gt=0, le=3_600_000)
    seed: int = 0
    sample_ms: int = Field(10, gt=0)
    trace: bool = True  # write the Perfetto trace (large for big scenarios)
    host: list[HostSpec] = Field(min_length=1)
    vm: list[VmSpec] = []
    noise: list[NoiseSpec] = []
    migration: list[MigrationSpec] = []
