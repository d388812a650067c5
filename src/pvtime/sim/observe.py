"""How a run watches each VM: what it notes as the VM runs, and each vCPU's steal, read three ways.

A vCPU's thread runs inside a `VcpuBody`, which notes the run_delay at each guest entry; its
`VcpuProbe` reads the host's truth, KVM's stolen-time record and the guest's own account; the
VM's `HypercallObserver` (KVM's tracepoint) moves the truth's baseline when PV_TIME_ST resets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.guest.kernel import ModelKernel
from pvtime.host import Host
from pvtime.host.task import Slice, Step
from pvtime.kvm import HypercallEvent
from pvtime.sim.recorder import Recorder, VcpuProbe
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
        return step


def vcpu_probe(vs: VmSpec, thread: VcpuThread, kernel: ModelKernel | None, state: VmState, *,
               carried: int = 0) -> VcpuProbe:
    """How to read a vCPU's steal; `carried` is its truth on the hosts it was migrated from."""
    machine, vcpu = thread.machine, thread.vcpu

    def truth() -> int:
        # run_delay growth since the guest's last PV_TIME_ST (which zeroes the record and moves
        # KVM's baseline), or since the first vcpu_load on this host (KVM re-baselines when the
        # task changes) plus the steal carried from earlier hosts; up to the vCPU's latest guest
        # entry. run_delay grows only when the thread arrives on a CPU, and while the VM runs
        # every arrival is an entry; waits of a paused or stopped VM's thread are no one's steal.
        first: int | None
        if probe.st_baseline_ns is not None:
            first, prior = probe.st_baseline_ns, 0
        else:
            first, prior = thread.first_run_delay_ns, carried
        now = probe.entry_run_delay
        return prior if now is None or first is None else prior + now - first

    def record() -> int | None:
        if not vs.pvtime:
            return None
        return machine.stolen_time(vcpu.id)

    def guest() -> int | None:
        if kernel is not None:
            return kernel.ticks.stat(vcpu.id).steal
        # An ELF guest's accounted steal is known once it prints it on its console.
        return console_steal(state.console_stat(machine), vcpu.id)

    probe = VcpuProbe(f"{vs.name}/vcpu{vcpu.id}", truth, record, guest,
                      guest_before=0 if kernel is not None else -1)
    return probe


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
            self.probes[event.vcpu_id].st_baseline_ns = task.run_delay_ns
        self.recorder.on_hypercall(self.host, task, self.host.now_ns(), event)
