"""`pvtime guest run` and `pvtime linux run`: one AArch64 guest on the unicorn backend, on a host
with M CPUs.

The VMM builds a QEMU-virt machine (RAM at 0x40000000, PL011 at 0x09000000, PV-time records at
0x090a0000), loads the ELF image -- or a Linux kernel, its initramfs and a device tree, on a
machine with a vGIC --, starts vCPU 0 at its entry and leaves the others powered off for PSCI
CPU_ON. Each vCPU is a host task of the fair scheduler (`pvtime.host.scheduler`); with fewer
host CPUs than vCPUs they wait on run queues, which is the steal the guest sees. Virtual time
only: the same image and options give the same console output and counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pvtime.host import Host, Step
from pvtime.host.events import EventLoop
from pvtime.host.scheduler import Scheduler
from pvtime.host.task import Slice
from pvtime.cpu import CpuKind
from pvtime.kvm import HypercallEvent, InternalErrorExit, Kvm, Vm
from pvtime.vmm import MachineConfig, StopReason, VcpuThread, build_machine, start_vcpu_threads
from pvtime.vmm.linux_boot import LinuxBoot

MS = 1_000_000


@dataclass(frozen=True)
class GuestRunOptions:
    """What `pvtime guest run` is asked for."""

    vcpus: int = 1
    host_cpus: int = 1
    memory_mib: int = 64
    counter_hz: int = 62_500_000
    time_limit_ns: int = 10_000_000_000
    instructions_per_sec: int = 1_000_000_000
    lpt_pv_hz: int | None = None  # configure Live Physical Time at this PV frequency

    def validate(self) -> None:
        """Raise ValueError naming the bad option."""
        if not 1 <= self.vcpus <= 64:
            raise ValueError(f"--vcpus must be in 1..64, got {self.vcpus}")
        if self.host_cpus < 1:
            raise ValueError(f"--host-cpus must be >= 1, got {self.host_cpus}")
        if self.memory_mib < 1:
            raise ValueError(f"--memory must be >= 1 MiB, got {self.memory_mib}")
        if not 1 <= self.counter_hz < 1 << 32:
            raise ValueError(f"--counter-hz must be in 1..2^32-1, got {self.counter_hz}")
        if self.time_limit_ns <= 0:
            raise ValueError("--time-limit must be positive")
        if self.lpt_pv_hz is not None and not 1 <= self.lpt_pv_hz < 1 << 32:
            raise ValueError(f"--lpt-pv-hz must be in 1..2^32-1, got {self.lpt_pv_hz}")
        if self.instructions_per_sec <= 0:
            raise ValueError(f"the instruction rate must be positive, got {self.instructions_per_sec}")


@dataclass
class VcpuReport:
    """One vCPU at the end of the run, as the host and the hypervisor saw it."""

    vcpu: int
    instructions: int = 0
    run_delay_ns: int = 0  # the thread's final run_delay
    st_baseline_ns: int | None = None  # run_delay when the guest last called PV_TIME_ST
    record_steal_ns: int | None = None  # the stolen-time record at the end
    # run_delay minus the baseline at each schedule-in after PV_TIME_ST: the values the guest's
    # steal clock can read (KVM updates the record at each vcpu_load, before guest code runs).
    steal_at_loads: list[int] = field(default_factory=list)

    @property
    def host_steal_ns(self) -> int | None:
        """run_delay growth since PV_TIME_ST (what the record should say), if the guest called it."""
        return None if self.st_baseline_ns is None else self.run_delay_ns - self.st_baseline_ns


@dataclass
class GuestRunResult:
    """How the run ended."""

    exit_status: int | None  # the guest's semihosting status
    stopped: StopReason | None  # why the VM stopped (None: the time limit came first)
    errors: list[InternalErrorExit]
    console: bytes
    virtual_ns: int
    vcpus: list[VcpuReport]
    context_switches: int = 0


class _ObservedThread:
    """A vCPU thread whose schedule-ins are observed (run_delay after each arrival)."""

    def __init__(self, thread: VcpuThread, report: VcpuReport) -> None:
        self.thread = thread
        self.report = report

    def step(self, slice_: Slice) -> Step:
        report = self.report
        if report.st_baseline_ns is not None:
            report.steal_at_loads.append(slice_.task.run_delay_ns - report.st_baseline_ns)
        return self.thread.step(slice_)


def _observe_pv_time_st(vm: Vm, threads: dict[int, VcpuThread], reports: dict[int, VcpuReport]) -> None:
    """Note the run_delay baseline PV_TIME_ST sets (KVM's last_steal), through the VM's tracepoint."""

    def trace(event: HypercallEvent) -> None:
        if event.baseline_reset:
            task = threads[event.vcpu_id].task
            assert task is not None
            report = reports[event.vcpu_id]
            report.st_baseline_ns = task.run_delay_ns
            report.steal_at_loads = [0]

    vm.subscribe_hypercalls(trace)


def run_guest(guest: bytes | Path | str | LinuxBoot, options: GuestRunOptions, *,
              console: Callable[[bytes], None] | None = None) -> GuestRunResult:
    """Run `guest` (an ELF image, or a Linux boot) until it exits, the VM stops, or the time limit;
    ElfError/ImageError/ValueError on bad input."""
    options.validate()
    linux, image = (guest, None) if isinstance(guest, LinuxBoot) else (None, guest)
    host = Host(options.counter_hz, ncpus=options.host_cpus, name="host")
    config = MachineConfig("linux" if linux else "guest", vcpus=options.vcpus, memory_mib=options.memory_mib,
                           cpu=CpuKind.UNICORN, instructions_per_sec=options.instructions_per_sec,
                           lpt_pv_hz=options.lpt_pv_hz, vgic=linux is not None)
    config.validate()
    machine = build_machine(Kvm(host), config, image=image, linux=linux, console=console)
    core = EventLoop()
    sched = Scheduler(host, core, end_ns=options.time_limit_ns)
    reports = {vcpu.id: VcpuReport(vcpu.id) for vcpu in machine.vcpus}
    threads = {t.vcpu.id: t for t in start_vcpu_threads(
        machine, host, sched, body=lambda thread: _ObservedThread(thread, reports[thread.vcpu.id]))}
    _observe_pv_time_st(machine.vm, threads, reports)
    t = 0
    while machine.stopped is None and t < options.time_limit_ns:
        t = min(options.time_limit_ns, t + 10 * MS)
        core.run(t)
    sched.finish()
    for vcpu_id, report in reports.items():
        task = threads[vcpu_id].task
        assert task is not None
        report.instructions = getattr(machine.cpus[vcpu_id], "instructions", 0)
        report.run_delay_ns = task.run_delay_ns
        report.record_steal_ns = machine.stolen_time(vcpu_id)
    return GuestRunResult(machine.exit_status, machine.stopped, list(machine.errors), bytes(machine.console),
                          max(host.clock_ns, core.now if machine.stopped is None else host.clock_ns),
                          list(reports.values()), sched.switches)
