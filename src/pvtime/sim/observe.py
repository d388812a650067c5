"""How a run watches each VM: what it notes as the VM runs, and each vCPU's steal, read three ways.

A vCPU's thread runs inside a `VcpuBody`, which notes the run_delay at each guest entry; its
`VcpuProbe` reads the host's truth (two ways: each wait as it passes, and as of the latest guest
entry, where KVM adds it to the record), KVM's stolen-time record and the guest's own account; the
VM's `HypercallObserver` (KVM's tracepoint) moves the truth's baseline when PV_TIME_ST resets it.
A migration starts new threads with new probes, which carry the truth over from the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.guest.kernel import ModelKernel
from pvtime.host import Host
from pvtime.host.task import Slice, Step
from pvtime.kvm import HypercallEvent
from pvtime.sim.recorder import Recorder, StealReading
from pvtime.sim.scenario import VmSpec
from pvtime.vmm import Machine, VcpuThread
from pvtime.vmm.images import PROC_STAT_STEAL, ConsoleProcStat


@dataclass
class VmState:
    """What the runner notes about a VM as it runs (it survives the VM's migration)."""

    machine: Machine | None = None  # the VM's current machine (a migration replaces it)
    image: str | None = None  # an ELF guest's image (its packaged name or path)
    stopped_ns: int | None = None  # when the current machine stopped (not a migration's source)
    first_run_ns: dict[int, int] = field(default_factory=dict)  # vCPU -> its thread's first run, on any host
    st_calls: dict[int, int] = field(default_factory=dict)  # vCPU -> successful PV_TIME_ST calls, on any host
    probes: dict[int, VcpuProbe] = field(default_factory=dict)  # vCPU -> its probe on the current machine
    # (virtual ns, guest clock ns, timer lateness ns) at every guest tick (KernelOptions.tick_observer)
    ticks: list[tuple[int, int, int]] = field(default_factory=list)
    # Console output of the machines a migration left (each VMM keeps its own): the VM's
    # console is their output followed by the current machine's.
    console_before: bytes = b""
    _console_len: int = -1
    _stat: ConsoleProcStat | None = None

    def on_tick(self, _index: int, guest_ns: int, late_ns: int) -> None:
        """A model guest's tick, at the virtual time of the host the VM is on now."""
        assert self.machine is not None
        self.ticks.append((self.machine.kvm.host.now_ns(), guest_ns, late_ns))

    def console(self, machine: Machine) -> str:
        """Everything the VM printed, on every host it ran on."""
        return (self.console_before + machine.console).decode("utf-8", "replace")

    def console_stat(self, machine: Machine) -> ConsoleProcStat:
        """The /proc/stat lines on the console so far (parsed again only when it has grown)."""
        size = len(self.console_before) + len(machine.console)
        if size != self._console_len or self._stat is None:
            self._console_len = size
            self._stat = ConsoleProcStat.parse(self.console(machine))
        return self._stat


class VcpuBody:
    """A vCPU thread as the scheduler runs it, observed: the run_delay at each entry while its VM
    is alive (each is a vcpu_load, where KVM updates the record), and when the VM stopped."""

    def __init__(self, thread: VcpuThread, probe: VcpuProbe, state: VmState) -> None:
        self.thread = thread
        self.probe = probe
        self.state = state

    def step(self, slice_: Slice) -> Step:
        machine = self.thread.machine
        self.state.first_run_ns.setdefault(self.thread.vcpu.id, slice_.start_ns)
        if machine.stopped is None and not machine.paused:  # a paused VM's thread does not enter it
            self.probe.entry_run_delay = slice_.task.run_delay_ns
        step = self.thread.step(slice_)
        if machine.stopped is not None and self.state.stopped_ns is None and machine is self.state.machine:
            self.state.stopped_ns = slice_.now_ns
            for probe in self.state.probes.values():  # waits after the VM's end are no one's steal
                probe.freeze(slice_.now_ns)
        return step


class Carried(NamedTuple):
    """A vCPU's host truth on the hosts it was migrated from, both ways."""

    wait_ns: int = 0
    run_delay_ns: int = 0


class VcpuProbe:
    """How to read one vCPU's steal while its VM runs on `thread`'s machine (a `StealProbe`)."""

    def __init__(self, vs: VmSpec, thread: VcpuThread, kernel: ModelKernel | None, state: VmState,
                 host: str, carried: Carried) -> None:
        self.key = f"{vs.name}/vcpu{thread.vcpu.id}"
        self.host = host
        self.pvtime = vs.pvtime
        self.thread = thread
        self.kernel = kernel
        self.state = state
        self.carried = carried
        self.st_baseline_ns: int | None = None  # run_delay at the guest's last PV_TIME_ST (KVM's baseline)
        self.entry_run_delay: int | None = None  # run_delay at the vCPU's latest guest entry (a vcpu_load)
        self.frozen_wait_ns: int | None = None  # the truth when the VM stopped

    def _baseline(self) -> tuple[int | None, Carried]:
        # run_delay growth counts from the guest's last PV_TIME_ST (which zeroes the record and
        # moves KVM's baseline), else from the first vcpu_load on this host (KVM re-baselines when
        # the task changes) on top of the steal carried from earlier hosts.
        if self.st_baseline_ns is not None:
            return self.st_baseline_ns, Carried()
        return self.thread.first_run_delay_ns, self.carried

    def run_delay_ns(self) -> int:
        """The truth as of the vCPU's latest guest entry. run_delay grows only when the thread
        arrives on a CPU, and while the VM runs every arrival is an entry; waits of a paused or
        stopped VM's thread are no one's steal."""
        first, prior = self._baseline()
        now = self.entry_run_delay
        return prior.run_delay_ns if now is None or first is None else prior.run_delay_ns + now - first

    def wait_ns(self, now_ns: int) -> int:
        """The truth with each wait counted as it passes, up to `now_ns` or the VM's end."""
        if self.frozen_wait_ns is not None:
            return self.frozen_wait_ns
        first, prior = self._baseline()
        task = self.thread.task
        if first is None or task is None:
            return prior.wait_ns
        return prior.wait_ns + task.run_delay_at(now_ns) - first

    def freeze(self, at_ns: int) -> None:
        """The VM stopped at `at_ns`: the truth stays as it was then."""
        if self.frozen_wait_ns is None:
            self.frozen_wait_ns = self.wait_ns(at_ns)

    def carried_over(self, now_ns: int) -> Carried:
        """What a migration at `now_ns` carries to the vCPU's next thread (the record travels in
        guest RAM; the truth goes with it: each way, up to now on this host)."""
        return Carried(self.wait_ns(now_ns), self.run_delay_ns())

    def record(self) -> int | None:
        """The stolen-time record in guest RAM (None: the VM has no PV time)."""
        return self.thread.machine.stolen_time(self.thread.vcpu.id) if self.pvtime else None

    def guest(self) -> int | None:
        """The guest kernel's accounted steal: a model guest's cpustat, or what an ELF guest has
        printed on its console so far (None until it prints it)."""
        cpu = self.thread.vcpu.id
        if self.kernel is not None:
            return self.kernel.ticks.stat(cpu).steal
        return console_steal(self.state.console_stat(self.thread.machine), cpu)

    def read(self, now_ns: int) -> StealReading:
        """The vCPU's steal at `now_ns`, every view at once."""
        cpu = self.thread.vcpu.id
        return StealReading(self.host, cpu in self.state.first_run_ns, self.state.st_calls.get(cpu, 0),
                            self.wait_ns(now_ns), self.run_delay_ns(), self.record(), self.guest())


def console_steal(stat: ConsoleProcStat, cpu: int) -> int | None:
    """A printed guest's steal in ns: its `steal_ns` line, else its /proc/stat line in USER_HZ."""
    if cpu in stat.steal_ns:
        return stat.steal_ns[cpu]
    if cpu in stat.cpus:
        return stat.cpus[cpu][PROC_STAT_STEAL] * (NSEC_PER_SEC // USER_HZ)
    return None


class HypercallObserver:
    """A VM's hypercalls on one host (through KVM's tracepoint), for the recorder and each vCPU's
    steal probe."""

    def __init__(self, recorder: Recorder, host: Host, threads: list[VcpuThread],
                 probes: dict[int, VcpuProbe]) -> None:
        self.recorder = recorder
        self.host = host
        self.threads = {t.vcpu.id: t for t in threads}
        self.probes = probes  # vCPU id -> its steal probe

    def __call__(self, event: HypercallEvent) -> None:
        task = self.threads[event.vcpu_id].task
        assert task is not None
        if event.baseline_reset:
            probe = self.probes[event.vcpu_id]
            probe.st_baseline_ns = task.run_delay_ns
            probe.state.st_calls[event.vcpu_id] = probe.state.st_calls.get(event.vcpu_id, 0) + 1
        self.recorder.on_hypercall(self.host, task, self.host.now_ns(), event)
