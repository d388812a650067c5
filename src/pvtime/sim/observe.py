"""How a run watches each VM: what it notes as the VM runs, and each vCPU's steal, read three ways.

A vCPU's thread runs inside a `VcpuBody`, which notes, as guest code executes: when the thread
arrives on a CPU (and its run_delay then), the run_delay at each guest entry (a vcpu_load, where
KVM adds it to the record), the stolen-time record, the guest's own account of its steal, what
the VM prints, and when the VM stopped; the VM's `HypercallObserver` (KVM's tracepoint) notes
each PV_TIME_ST, which moves the truth's baseline. Once the run is over, a vCPU's `VcpuProbe`
reads these notes at any time: the host's truth (two ways: each wait as it passes, and as of the
latest guest entry), KVM's record and the guest's account. A migration starts new threads with
new probes, which carry the truth over from the old ones.

Why notes read afterwards, rather than reading the VM when the event loop reaches a sample time:
guest code runs ahead of the event loop (a scheduler segment is simulated at once), so the VM is
then already past that time; and stopping every segment there would give the host scheduler a
decision point Linux does not have, so the results would depend on the sample interval. Instead
a body splits its own execution at the sample times -- invisible to the host, as the
scheduler's `max_segment_ns` split is -- and what a piece of execution beginning at `a` changed
is noted at `a` (`pvtime.sim.steps.Steps`): at a sample time, the notes are exactly what a run
stopped there reports.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import NamedTuple

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.guest.kernel import ModelKernel
from pvtime.host import Host
from pvtime.host.task import Slice, Step, TaskState
from pvtime.kvm import HypercallEvent
from pvtime.sim.recorder import Recorder, StealReading
from pvtime.sim.scenario import VmSpec
from pvtime.sim.steps import Steps
from pvtime.vmm import Machine, VcpuThread
from pvtime.vmm.images import PROC_STAT_STEAL, ConsoleProcStat


@dataclass
class VmState:
    """What the runner notes about a VM as it runs (it survives the VM's migration)."""

    machine: Machine | None = None  # the VM's current machine (a migration replaces it)
    image: str | None = None  # an ELF guest's image (its packaged name or path)
    stopped_ns: int | None = None  # when the current machine stopped (not a migration's source)
    first_run_ns: dict[int, int] = field(default_factory=dict)  # vCPU -> its thread's first run, on any host
    # vCPU -> the start of the execution piece of each successful PV_TIME_ST, on any host
    st_calls: dict[int, list[int]] = field(default_factory=dict)
    probes: dict[int, VcpuProbe] = field(default_factory=dict)  # vCPU -> its probe on the current machine
    # (virtual ns, guest clock ns, timer lateness ns) at every guest tick (KernelOptions.tick_observer)
    ticks: list[tuple[int, int, int]] = field(default_factory=list)
    # Console output of the machines a migration left (each VMM keeps its own): the VM's
    # console is their output followed by the current machine's.
    console_before: bytes = b""
    # The console as it grew: (start of the execution piece that printed, what it printed).
    printed: list[tuple[int, bytes]] = field(default_factory=list)
    _printed_len: int = 0
    _console_len: int = -1
    _stat: ConsoleProcStat | None = None
    _stat_at: dict[int, ConsoleProcStat] = field(default_factory=dict)  # chunks printed -> parsed

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

    def note_console(self, at_ns: int) -> None:
        """Note what the execution piece that began at `at_ns` printed."""
        assert self.machine is not None
        size = len(self.console_before) + len(self.machine.console)
        if size > self._printed_len:
            whole = self.console_before + self.machine.console
            self.printed.append((at_ns, bytes(whole[self._printed_len:size])))
            self._printed_len = size

    def console_stat_at(self, t_ns: int) -> ConsoleProcStat:
        """The /proc/stat lines the VM had printed before `t_ns`."""
        chunks = [text for at, text in self.printed if at < t_ns]
        stat = self._stat_at.get(len(chunks))  # the chunks before t only grow with t
        if stat is None:
            stat = self._stat_at[len(chunks)] = ConsoleProcStat.parse(b"".join(chunks).decode("utf-8", "replace"))
        return stat


class VcpuBody:
    """A vCPU thread as the scheduler runs it, observed: its execution is split at the sample
    times (every `sample_ns`), and after each piece what the VM now shows is noted."""

    def __init__(self, thread: VcpuThread, probe: VcpuProbe, state: VmState, sample_ns: int) -> None:
        self.thread = thread
        self.probe = probe
        self.state = state
        self.sample_ns = sample_ns
        self._vcpu_id = thread.vcpu.id
        self._timeslices = 0

    def step(self, slice_: Slice) -> Step:
        task = slice_.task
        first_run = self.state.first_run_ns
        if self._vcpu_id not in first_run:
            first_run[self._vcpu_id] = slice_.start_ns
        if task.timeslices != self._timeslices:  # the first call of a timeslice: it arrived now
            self._timeslices = task.timeslices
            self.probe.arrivals.append((slice_.start_ns, task.run_delay_ns))
        sample = self.sample_ns
        while True:
            start = slice_.now_ns
            end = (start // sample + 1) * sample
            if slice_.deadline_ns < end:
                end = slice_.deadline_ns
            piece = Slice(task, start, end, start)
            step = self._run_piece(piece)
            now = slice_.now_ns = piece.now_ns
            woke = piece.deadline_ns < end  # it woke a task: its segment ends here
            if woke:
                slice_.deadline_ns = piece.deadline_ns
            if step.state is not TaskState.QUEUED or woke or now == start or now == slice_.deadline_ns:
                return step

    def _run_piece(self, piece: Slice) -> Step:
        machine, state, at = self.thread.machine, self.state, piece.start_ns
        if machine.stopped is None and not machine.paused:  # a paused VM's thread does not enter it
            entry, delay = self.probe.entry, piece.task.run_delay_ns
            if delay != entry.latest:
                entry.set(at, delay)
        # The piece is the slice executing (Host.running, written out: this runs for every piece).
        host = machine.kvm.host
        outer, host.current = host.current, piece
        try:
            step = self.thread.step(piece)
        finally:
            host.current = outer
        if machine.stopped is not None and state.stopped_ns is None and machine is state.machine:
            state.stopped_ns = piece.now_ns
            for probe in state.probes.values():  # waits after the VM's end are no one's steal
                probe.frozen = (at, piece.now_ns)
        state.note_console(at)
        own = self.probe
        noted_own = False
        for probe in state.probes.values():
            probe.note(at)
            noted_own = noted_own or probe is own
        if not noted_own:  # a migration's source thread, after the switch-over
            own.note(at)
        return step


class Carried(NamedTuple):
    """A vCPU's host truth on the hosts it was migrated from, both ways."""

    wait_ns: int = 0
    run_delay_ns: int = 0


class VcpuProbe:
    """How to read one vCPU's steal while its VM runs on `thread`'s machine (a `StealProbe`):
    from the notes of its `VcpuBody`, at any time once the run is over. `previous` is the vCPU's
    probe on the host its VM was migrated from, and when the VM left it."""

    def __init__(self, vs: VmSpec, thread: VcpuThread, kernel: ModelKernel | None, state: VmState,
                 host: str, previous: tuple[VcpuProbe, int] | None = None) -> None:
        self.key = f"{vs.name}/vcpu{thread.vcpu.id}"
        self.host = host
        self.pvtime = vs.pvtime
        self.thread = thread
        self.kernel = kernel
        self.state = state
        self.previous = previous
        self.st_baseline_ns: int | None = None  # run_delay at the guest's last PV_TIME_ST (KVM's baseline)
        self.arrivals: list[tuple[int, int]] = []  # (when its thread arrived on a CPU, its run_delay then)
        self.entry: Steps[int | None] = Steps(None)  # run_delay at its latest guest entry (a vcpu_load)
        # Where run_delay growth counts from, and whether PV_TIME_ST set it (see _baseline).
        self.baseline: Steps[tuple[int | None, bool]] = Steps((None, False))
        self._vcpu_id = thread.vcpu.id
        # The guest's counters of this vCPU (created now, as /proc/stat shows a line for each CPU
        # observed; the kernel keeps the same object for good).
        self._cpustat = None if kernel is None else kernel.ticks.stat(self._vcpu_id)
        self._noted_st: int | None = None
        self._record_field: memoryview | None = None  # its record's stolen_time bytes, once set
        self._noted_first: int | None = None
        self.record: Steps[int | None] = Steps(self._record_now())
        self.guest_steal: Steps[int | None] = Steps(self._model_steal_now())
        self.frozen: tuple[int, int] | None = None  # (piece start, time) of the VM's stop

    def note(self, at_ns: int) -> None:
        """Note what the execution piece that began at `at_ns` left in the VM for this vCPU."""
        st, first = self.st_baseline_ns, self.thread.first_run_delay_ns
        if st != self._noted_st or first != self._noted_first:  # (the baseline changes rarely)
            self._noted_st, self._noted_first = st, first
            self.baseline.set(at_ns, (st, True) if st is not None else (first, False))
        # Steps.set notes nothing for an unchanged value; checked here first, as this runs for
        # every vCPU of the VM after every execution piece.
        if self.pvtime:
            field = self._record_field
            if field is None:
                field = self._record_field = self.thread.machine.stolen_time_field(self._vcpu_id)
            record = None if field is None else int.from_bytes(field, "little")
            if record != self.record.latest:
                self.record.set(at_ns, record)
        if self._cpustat is not None:
            steal = self._cpustat.steal
            if steal != self.guest_steal.latest:
                self.guest_steal.set(at_ns, steal)

    def _record_now(self) -> int | None:
        return self.thread.machine.stolen_time(self._vcpu_id) if self.pvtime else None

    def _model_steal_now(self) -> int | None:
        return None if self._cpustat is None else self._cpustat.steal

    # --- reading, once the run is over ------------------------------------------------------

    def _baseline(self, t_ns: int) -> tuple[int | None, Carried]:
        # run_delay growth counts from the guest's last PV_TIME_ST (which zeroes the record and
        # moves KVM's baseline), else from the first vcpu_load on this host (KVM re-baselines when
        # the task changes) on top of the steal carried from earlier hosts.
        first, from_st = self.baseline.at(t_ns)
        if from_st or self.previous is None:
            return first, Carried()
        probe, left = self.previous
        return first, Carried(probe.wait_ns(left), probe.run_delay_ns(left))

    def _task_run_delay(self, t_ns: int) -> int:
        """The thread's run_delay with a wait in progress at `t_ns` counted up to it (as
        `Task.run_delay_at` at that time): schedstat adds a wait at the arrival that ends it, which
        `arrivals` holds, so the wait began that much before it."""
        arrivals = self.arrivals
        k = bisect_left(arrivals, (t_ns,))  # the first arrival at or after t
        if k == len(arrivals):
            task = self.thread.task
            assert task is not None
            return task.run_delay_at(t_ns)  # after its last arrival: as its task stands at the end
        arrived, delay = arrivals[k]
        before = arrivals[k - 1][1] if k else 0
        return before + max(0, t_ns - (arrived - (delay - before)))

    def run_delay_ns(self, t_ns: int) -> int:
        """The truth as of the vCPU's latest guest entry before `t_ns`. run_delay grows only when the
        thread arrives on a CPU, and while the VM runs every arrival is an entry; waits of a paused
        or stopped VM's thread are no one's steal."""
        first, prior = self._baseline(t_ns)
        now = self.entry.at(t_ns)
        return prior.run_delay_ns if now is None or first is None else prior.run_delay_ns + now - first

    def wait_ns(self, t_ns: int) -> int:
        """The truth with each wait counted as it passes, up to `t_ns` or the VM's end."""
        if self.frozen is not None and self.frozen[0] < t_ns:
            t_ns = min(t_ns, self.frozen[1])
        first, prior = self._baseline(t_ns)
        if first is None:
            return prior.wait_ns
        return prior.wait_ns + self._task_run_delay(t_ns) - first

    def guest_ns(self, t_ns: int) -> int | None:
        """The guest kernel's accounted steal: a model guest's cpustat, or what an ELF guest had
        printed on its console (None until it prints it)."""
        if self.kernel is not None:
            return self.guest_steal.at(t_ns)
        return console_steal(self.state.console_stat_at(t_ns), self.thread.vcpu.id)

    def read(self, now_ns: int) -> StealReading:
        """The vCPU's steal at `now_ns`, every view at once, as a run stopped then reports it."""
        cpu = self.thread.vcpu.id
        first = self.state.first_run_ns.get(cpu)
        calls = bisect_left(self.state.st_calls.get(cpu, []), now_ns)
        return StealReading(self.host, first is not None and first < now_ns, calls, self.wait_ns(now_ns),
                            self.run_delay_ns(now_ns), self.record.at(now_ns), self.guest_ns(now_ns))


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
            piece = self.host.current  # the vCPU's execution piece (`VcpuBody`)
            at = piece.start_ns if piece is not None else self.host.now_ns()
            probe.state.st_calls.setdefault(event.vcpu_id, []).append(at)
        self.recorder.on_hypercall(self.host, task, self.host.now_ns(), event)
