"""The scenario file's schema: hosts, VMs, guests, noise and migrations, as pydantic models.

Each field says its type, default and range; a model validator checks what one spec holds alone.
Reading a file, the checks across specs and the errors naming file, line and field are
`pvtime.sim.scenario`'s.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from pvtime.abi.linux import CONSOLE_BOOTARGS
from pvtime.abi.widths import U32
from pvtime.cpu import CpuKind
from pvtime.host.sched_config import CfsTunables, EevdfTunables, SchedConfig
from pvtime.vmm.images import PACKAGE_IMAGES

# The scenario format this pvtime reads (a file's optional top-level `format = N` names the one it
# was written for). Raise it when a file of the new format would be misread by an older pvtime.
SCENARIO_FORMAT = 1


# A guest counts its tick in counter ticks (CNTFRQ / HZ): a generic timer below 1 MHz -- slower
# than any Arm system's -- cannot time a 1000 Hz tick to a microsecond.
MIN_COUNTER_HZ = 1_000_000


class _Strict(BaseModel):
    # strict: a TOML value of the wrong type is refused, not converted ("50" is no duration).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SchedSpec(_Strict):
    """A host's scheduler: Linux's fair policy, HZ, preemption model, and that policy's tunables
    (before Linux's CPU-count scaling). Unset tunables take Linux's defaults."""

    policy: Literal["eevdf", "cfs"] = Field(
        "eevdf", description="the fair scheduling policy: eevdf as in Linux >= 6.6, cfs as in Linux <= 6.5")
    hz: Literal[100, 250, 300, 1000] = Field(250, description="CONFIG_HZ: the host's scheduler tick rate (Hz)")
    preempt: Literal["none", "voluntary", "full", "lazy"] = Field(
        "voluntary", description="the preemption model (lazy: Linux >= 6.13, no IPI for a remote wake-up "
                                 "preemption; not with cfs)")
    base_slice_us: int | None = Field(
        None, gt=0, description="eevdf only: sysctl_sched_base_slice (µs)  [unset: Linux's 700 µs]")
    latency_us: int | None = Field(
        None, gt=0, description="cfs only: sysctl_sched_latency (µs)  [unset: Linux's 6000 µs]")
    min_granularity_us: int | None = Field(
        None, gt=0, description="cfs only: sysctl_sched_min_granularity (µs)  [unset: Linux's 750 µs]")
    wakeup_granularity_us: int | None = Field(
        None, gt=0, description="cfs only: sysctl_sched_wakeup_granularity (µs)  [unset: Linux's 1000 µs]")

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

    name: str = Field(min_length=1, description="the host's name, unique among hosts (VMs, noise and migrations "
                                                "name it)")
    cpus: int = Field(ge=1, le=4096, description="physical CPUs, numbered from 0")
    counter_hz: int = Field(25_000_000, ge=MIN_COUNTER_HZ, le=U32,
                            description="the generic timer's frequency (CNTFRQ_EL0, Hz); Armv8.6 and later fix it at "
                                        "1 GHz")
    schedstats: bool = Field(True, description="CONFIG_SCHEDSTATS (sched_info_on()): without it KVM does not offer "
                                               "PV stolen time, as Linux does")
    sched: SchedSpec = Field(SchedSpec(), description="the host's scheduler (the table `[host.sched]`)")


class ModelGuestSpec(_Strict):
    """The Python model of a Linux arm64 guest: a tick at `hz`, and on each vCPU busy periods
    (CPU work) and idle periods (WFI) of random lengths drawn from the scenario's seed."""

    cpu: ClassVar[CpuKind] = CpuKind.MODEL  # the vCPUs the VMM gives it
    kind: Literal["model"] = Field(description="\"model\": the Python model of the Linux arm64 guest")
    # A TOML array is a list: the pair is taken from one (strict=False), each number stays strict.
    busy_us: tuple[StrictInt, StrictInt] = Field((2000, 12000), strict=False, description="[low, high]: each vCPU works a random length of "
                                                                "CPU time in this range (µs, uniform), then idles")
    idle_us: tuple[StrictInt, StrictInt] = Field((0, 0), strict=False, description="[low, high]: the idle (WFI) period after each busy one "
                                                         "(µs, uniform); [0, 0]: never idle")
    hz: int = Field(250, ge=1, le=10000, description="the guest kernel's CONFIG_HZ: its tick, at which it accounts "
                                                      "steal in /proc/stat")
    steal_acc: bool = Field(True, description="the run-queue clock leaves out steal (CONFIG_PARAVIRT_TIME_ACCOUNTING); "
                                              "false: the guest booted with no-steal-acc")
    nohz_idle: bool = Field(True, description="arm64 Linux's NO_HZ_IDLE: the tick stops while a vCPU idles; false: "
                                              "a periodic tick through idle")

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

    cpu: ClassVar[CpuKind] = CpuKind.UNICORN  # the vCPUs the VMM gives it
    kind: Literal["elf"] = Field(description="\"elf\": AArch64 machine code on the unicorn CPU")
    image: Literal["conformance", "minikernel"] | None = Field(
        None, description="a packaged image (guests/*.c, built into the package); give this or path")
    path: str | None = Field(None, description="an ELF file for QEMU virt, relative to the scenario file; give this "
                                               "or image")
    duration_ms: int | None = Field(None, gt=0, le=3_600_000,
                                    description="minikernel_config: how long the guest's workload runs (counter-time "
                                                "ms) before it prints /proc/stat and exits  [unset: the image's]")
    busy_ms: int | None = Field(None, gt=0, le=3_600_000,
                                description="minikernel_config: each busy period (counter-time ms)  [unset: the "
                                            "image's]")
    idle_ms: int | None = Field(None, ge=0, le=3_600_000,
                                description="minikernel_config: each idle (WFI) period (counter-time ms)  [unset: "
                                            "the image's]")
    # The guest's arithmetic is in counter time, so the speed changes how many instructions a busy
    # period takes (and the wall time of a run), not the steal it sees.
    instructions_per_sec: int = Field(1_000_000_000, ge=1_000, le=100_000_000_000,
                                      description="the guest's speed; it sets how many instructions a busy period "
                                                  "executes (and the run's wall time), not the steal it sees")

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

    cpu: ClassVar[CpuKind] = CpuKind.UNICORN  # the vCPUs the VMM gives it
    kind: Literal["linux"] = Field(description="\"linux\": a Linux arm64 kernel on the unicorn CPU, with a vGICv2")
    kernel: str | None = Field(None, description="an arm64 Image, raw or gzipped, relative to the scenario file  "
                                                 "[unset: the packaged Linux 6.1 kernel]")
    initrd: str | None = Field(None, description="a newc cpio initramfs, gzipped or not, relative to the scenario "
                                                 "file  [unset: the packaged one]")
    append: str = Field("", description="kernel command line, after console=ttyAMA0 (and pvtime.busy_ms)")
    busy_ms: int | None = Field(None, gt=0, le=3_600_000,
                                description="the packaged /init's busy phase: every CPU runs a CPU-bound process "
                                            "this long (pvtime.busy_ms)  [unset: its default, 2000]")
    instructions_per_sec: int = Field(1_000_000_000, ge=1_000, le=100_000_000_000,
                                      description="the guest's speed: instructions per virtual second (the "
                                                  "counter follows them)")

    def bootargs(self) -> str:
        """The kernel command line the VMM passes."""
        busy = f"pvtime.busy_ms={self.busy_ms}" if self.busy_ms is not None else ""
        return " ".join(a for a in (CONSOLE_BOOTARGS, busy, self.append) if a)


GuestSpec = Annotated[ModelGuestSpec | ElfGuestSpec | LinuxGuestSpec, Field(discriminator="kind")]


class VmmThreadSpec(_Strict):
    """The VMM's own thread of a VM (device emulation, I/O): a periodic burst of CPU work."""

    period_us: int = Field(gt=0, description="released every this many µs")
    burst_us: int = Field(gt=0, description="CPU time it needs each period (µs); a burst kept waiting ends late, "
                                            "not shorter")

    @model_validator(mode="after")
    def _fits(self) -> VmmThreadSpec:
        if self.burst_us > self.period_us:
            raise ValueError(f"burst_us ({self.burst_us}) exceeds period_us ({self.period_us})")
        return self


class VmSpec(_Strict):
    """A virtual machine on one host."""

    name: str = Field(min_length=1, description="the VM's name, unique among VMs and noise")
    host: str = Field(description="the host it starts on")
    vcpus: int = Field(1, ge=1, le=512, description="its vCPUs, each a host thread")
    memory_mib: int = Field(64, ge=1, le=65536, description="guest RAM (MiB), at 0x40000000 as on QEMU virt")
    pvtime: bool = Field(True, description="the VMM configures PV stolen time (KVM_ARM_VCPU_PVTIME_CTRL); false: "
                                           "the guest cannot see its steal")
    nice: int = Field(0, ge=-20, le=19, description="the nice value of its vCPU and VMM threads")
    cpus: list[int] | None = Field(None, description="the host CPUs every vCPU thread may run on  [unset: all]; "
                                                     "not with pin")
    pin: list[int] | None = Field(None, description="vCPU i's thread pinned to host CPU pin[i], one per vCPU; not "
                                                    "with cpus")
    guest: GuestSpec = Field(description="what runs in it (the table `vm.guest`, by kind)")
    vmm_thread: VmmThreadSpec | None = Field(None, description="the VMM's own thread (the table `vm.vmm_thread`)  "
                                                               "[unset: none]")
    lpt_pv_hz: int | None = Field(None, ge=MIN_COUNTER_HZ, le=U32,
                                  description="Live Physical Time: the PV counter frequency the guest sees (Hz), kept "
                                              "across migrations  [unset: no LPT]")


class MigrationSpec(_Strict):
    """A live migration of a VM to another host at a virtual time (pre-copy, then stop-and-copy)."""

    vm: str = Field(description="the VM to migrate")
    to: str = Field(description="the destination host")
    at_ms: int = Field(ge=0, description="when the migration begins (virtual ms, before duration_ms)")
    bandwidth_mbit: int = Field(10_000, gt=0, description="the link's bandwidth (Mbit/s)")
    setup_us: int = Field(1000, ge=0, description="fixed switch-over cost (µs), part of the downtime")
    max_rounds: int = Field(5, ge=1, le=100, description="pre-copy rounds at most before the stop-and-copy")
    # A VM without LPT moved to a host of another counter frequency: its counter then runs at the
    # wrong rate (refused unless set, and flagged in the results).
    allow_frequency_change: bool = Field(
        False, description="let a VM without LPT move to a host of another counter frequency: its clock then runs "
                           "at the wrong rate (refused otherwise; flagged in the results)")


class NoiseSpec(_Strict):
    """Host tasks that compete with the vCPUs: CPU hogs (with a duty cycle) or periodic bursts."""

    name: str = Field(min_length=1, description="the tasks' name (NAME.0, NAME.1, ... when count > 1), unique "
                                                "among VMs and noise")
    host: str = Field(description="the host they run on")
    kind: Literal["hog", "burst"] = Field("hog", description="hog: spins for duty of each period; burst: needs "
                                                             "burst_us of CPU time each period")
    count: int = Field(1, ge=1, le=4096, description="how many such tasks")
    nice: int = Field(0, ge=-20, le=19, description="their nice value")
    cpus: list[int] | None = Field(None, description="the host CPUs they may run on  [unset: all]")
    duty: float = Field(1.0, gt=0.0, le=1.0, description="hog: the busy share of each period (1: always runnable)")
    period_us: int = Field(10_000, gt=0, description="the period (µs)")
    burst_us: int | None = Field(None, gt=0, description="burst: the CPU time needed each period (µs, at most "
                                                         "period_us); a burst kept waiting ends late")
    phase_us: int = Field(0, ge=0, description="where the first period starts (µs)")

    @model_validator(mode="after")
    def _burst(self) -> NoiseSpec:
        if self.kind == "burst" and self.burst_us is None:
            raise ValueError("a burst needs burst_us")
        if self.burst_us is not None and self.burst_us > self.period_us:
            raise ValueError(f"burst_us ({self.burst_us}) exceeds period_us ({self.period_us})")
        return self


class ScenarioSpec(_Strict):
    """A whole scenario."""

    format: int = Field(SCENARIO_FORMAT, ge=1, description="the scenario format the file was written for (a "
                                                          "newer one than this pvtime reads is refused)")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="the scenario's name: the default results folder is results/NAME/")
    description: str = Field("", description="one line on what it shows (pvtime scenarios lists it)")
    duration_ms: int = Field(gt=0, le=3_600_000, description="virtual time to run (ms)")
    seed: int = Field(0, description="seeds the guests' random workloads: the same seed gives byte-identical "
                                     "results")
    sample_ms: int = Field(10, gt=0, description="the series' sample interval, and the occupancy's (virtual ms)")
    trace: bool = Field(True, description="write the Perfetto trace, trace.json (large for big scenarios)")
    host: list[HostSpec] = Field(min_length=1, description="the physical machines (tables `[[host]]`)")
    vm: list[VmSpec] = Field([], description="the virtual machines (tables `[[vm]]`)")
    noise: list[NoiseSpec] = Field([], description="host tasks competing with the vCPUs (tables `[[noise]]`)")
    migration: list[MigrationSpec] = Field([], description="live migrations (tables `[[migration]]`)")
