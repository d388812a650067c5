"""Build the hosts, VMs and noise of a scenario, run them in virtual time, and collect results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.host import (
    CpuHog, EventCore, EventLoop, Host, PeriodicBurst, Scheduler, Task, TaskBody,
)
from pvtime.host.events import PRIO_WAKE
from pvtime.host.task import Slice, Step
from pvtime.kvm import HypercallEvent, Kvm, Vcpu
from pvtime.sim.migration import LinkSpec, MigrationDriver
from pvtime.sim.recorder import CATEGORIES, Recorder, VcpuProbe
from pvtime.sim.results import (
    ClockRow, MigrationRow, MigrationStatus, RunResult, TaskRow, VcpuRow, VmRow,
)
from pvtime.sim.scenario import (
    ElfGuestSpec, MigrationSpec, ModelGuestSpec, Scenario, ScenarioSpec, VmSpec, elf_image, elf_image_path,
)
from pvtime.vmm import Machine, MachineConfig, VcpuThread
from pvtime.vmm.images import PROC_STAT_STEAL, ConsoleProcStat

US = 1000
MS = 1_000_000

Progress = Callable[[int, int], None]


@dataclass
class _Vm:
    spec: VmSpec
    host: Host
    machine: Machine
    threads: list[VcpuThread]
    kernel: ModelKernel | None
    state: _VmState
    # (virtual ns, guest clock ns, timer lateness ns) at every guest tick (KernelOptions.tick_observer)
    ticks: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class _VmState:
    """What the runner notes about a VM as it runs (it survives the VM's migration)."""

    machine: Machine | None = None  # the VM's current machine (a migration replaces it)
    image: str | None = None  # an ELF guest's image (its packaged name or path)
    stopped_ns: int | None = None  # when the current machine stopped (not a migration's source)
    first_run_ns: dict[int, int] = field(default_factory=dict)  # vCPU -> its thread's first run, on any host
    # Console output of the machines a migration left (each VMM keeps its own): the VM's
    # console is their output followed by the current machine's.
    console_before: bytes = b""
    _console_len: int = -1
    _stat: ConsoleProcStat | None = None

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


class _VcpuBody:
    """A vCPU thread as the scheduler runs it, observed: the run_delay at each entry while its VM
    is alive (each is a vcpu_load, where KVM updates the record), and when the VM stopped."""

    def __init__(self, thread: VcpuThread, probe: VcpuProbe, state: _VmState) -> None:
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


def run(scenario: Scenario, progress: Progress | None = None, *, core: EventCore | None = None,
        max_segment_ns: int | None = None) -> RunResult:
    """Run `scenario` to its end; `progress(now_ns, duration_ns)` is called as virtual time advances.

    `core` replaces the default event loop (bench/bench_sim.py drives the same run with SimPy);
    `max_segment_ns` splits the execution of task bodies (an internal limit: results do not change).
    """
    spec = scenario.spec
    duration = spec.duration_ms * MS
    if core is None:
        core = EventLoop()
    hosts = [Host(h.counter_hz, ncpus=h.cpus, schedstats=h.schedstats, name=h.name) for h in spec.host]
    recorder = Recorder(hosts, duration, spec.sample_ms * MS, trace=spec.trace)
    by_name = {h.name: h for h in hosts}
    scheds: dict[str, Scheduler] = {}
    for hs, host in zip(spec.host, hosts):
        scheds[host.name] = Scheduler(host, core, hs.sched.config(), end_ns=duration, observer=recorder,
                                      max_segment_ns=max_segment_ns)
    kvms = {h.name: Kvm(h) for h in hosts}
    kinds: dict[tuple[str, int], str] = {}
    vms = [_build_vm(i, vs, scenario, by_name[vs.host], kvms[vs.host], scheds[vs.host], recorder, kinds)
           for i, vs in enumerate(spec.vm)]
    for ns in spec.noise:
        host = by_name[ns.host]
        for k in range(ns.count):
            name = ns.name if ns.count == 1 else f"{ns.name}.{k}"
            body: TaskBody
            if ns.kind == "hog":
                body = CpuHog(ns.duty, ns.period_us * US, ns.phase_us * US)
            else:
                assert ns.burst_us is not None
                body = PeriodicBurst(ns.burst_us * US, ns.period_us * US, ns.phase_us * US)
            _spawn(host, scheds[host.name], recorder, kinds, name, body, "noise", nice=ns.nice, cpus=ns.cpus)
    drivers = _plan_migrations(spec, core, vms, by_name, kvms, scheds, recorder, kinds)
    chunk = max(spec.sample_ms * MS, duration // 200)
    t = 0
    while t < duration:
        t = min(duration, t + chunk)
        core.run(t)
        if progress is not None:
            progress(t, duration)
    for s in scheds.values():
        s.finish()
    result = _collect(spec, scenario.source, duration, hosts, vms, recorder, scheds, core, kinds)
    result.migrations = [_migration_row(ms, d) for ms, d in drivers]
    result.clocks = {vm.spec.name: _clock_row(vm) for vm in vms if vm.kernel is not None}
    return result


def _plan_migrations(spec: ScenarioSpec, core: EventCore, vms: list[_Vm], hosts: dict[str, Host],
                     kvms: dict[str, Kvm], scheds: dict[str, Scheduler], recorder: Recorder,
                     kinds: dict[tuple[str, int], str]) -> list[tuple[MigrationSpec, list[MigrationDriver]]]:
    """Schedule each [[migration]]: at its time, migrate the VM from wherever it is then."""
    planned: list[tuple[MigrationSpec, list[MigrationDriver]]] = []
    by_vm = {vm.spec.name: vm for vm in vms}
    for ms in spec.migration:
        box: list[MigrationDriver] = []
        planned.append((ms, box))

        def begin(ms: MigrationSpec = ms, box: list[MigrationDriver] = box) -> None:
            vm = by_vm[ms.vm]
            src = scheds[vm.host.name]
            dst_host, dst_sched = hosts[ms.to], scheds[ms.to]

            def start(machine: Machine, now: int) -> list[VcpuThread]:
                # The record travels in guest RAM, so the truth does too: each vCPU's steal up
                # to its last entry on the source (stopped now), plus what its new thread waits.
                before = {t.vcpu.id: recorder.probes[(vm.host.name, t.task.tid)].truth()
                          for t in vm.threads if t.task is not None}
                vm.state.console_before += bytes(vm.machine.console)
                vm.host, vm.machine, vm.threads = dst_host, machine, []
                vm.state.machine = machine
                hypercalls = _HypercallObserver(recorder)
                for vcpu in machine.vcpus:
                    thread = VcpuThread(machine, vcpu)
                    probe = _probe(vm.spec, machine, vcpu, thread, vm.kernel, vm.state,
                                   carried=before.get(vcpu.id, 0))
                    cpus = [vm.spec.pin[vcpu.id]] if vm.spec.pin is not None else vm.spec.cpus
                    task = _spawn(dst_host, dst_sched, recorder, kinds, f"{vm.spec.name}/vcpu{vcpu.id}",
                                  _VcpuBody(thread, probe, vm.state), "vcpu", nice=vm.spec.nice, cpus=cpus,
                                  probe=probe)
                    thread.task = task
                    vcpu.set_wake_callback(partial(dst_sched.wake, task))
                    hypercalls.vcpus[vcpu.id] = (dst_host, task, probe)
                    vm.threads.append(thread)
                machine.vm.subscribe_hypercalls(hypercalls)
                return vm.threads

            link = LinkSpec(bandwidth_bytes_per_s=ms.bandwidth_mbit * 125_000, setup_ns=ms.setup_us * US,
                            max_rounds=ms.max_rounds)
            box.append(MigrationDriver(core, vm.machine, vm.threads, src, kvms[ms.to], start,
                                       at_ns=core.now, link=link))

        core.at(ms.at_ms * MS, PRIO_WAKE, begin)
    return planned


def _migration_row(ms: MigrationSpec, box: list[MigrationDriver]) -> MigrationRow:
    if not box:
        return MigrationRow(ms.vm, ms.to, ms.at_ms, MigrationStatus.NOT_REACHED)
    d = box[0]
    st = d.migration.stats
    status = (MigrationStatus.ERROR if d.error else
              MigrationStatus.DONE if d.result is not None else MigrationStatus.IN_PROGRESS)
    return MigrationRow(ms.vm, ms.to, ms.at_ms, status, d.error, d.migration.source.kvm.host.name,
                        st.rounds, tuple(st.pages), st.bytes, st.downtime_ns)


def _clock_row(vm: _Vm) -> ClockRow:
    """The guest clock (its clocksource, PV with LPT) against virtual time, and tick lateness."""
    assert vm.kernel is not None
    clock = vm.kernel.clock
    return ClockRow(None if clock is None else clock.name, None if clock is None else clock.freq,
                    vm.kernel.timer.early, tuple((t, ns - t, x) for t, ns, x in vm.ticks))


def _spawn(host: Host, sched: Scheduler, recorder: Recorder, kinds: dict[tuple[str, int], str], name: str,
           body: TaskBody, kind: str, *, nice: int = 0, cpus: list[int] | None = None,
           probe: VcpuProbe | None = None) -> Task:
    task = host.spawn(name)
    recorder.register(host, task, kind, probe)
    kinds[(host.name, task.tid)] = kind
    sched.add(task, body, nice=nice, cpus=cpus)
    return task


def _build_vm(index: int, vs: VmSpec, scenario: Scenario, host: Host, kvm: Kvm, sched: Scheduler,
              recorder: Recorder, kinds: dict[tuple[str, int], str]) -> _Vm:
    spec = scenario.spec
    kernel: ModelKernel | None = None
    box: list[_Vm] = []  # the _Vm, once built: its host changes when the VM migrates
    state = _VmState()
    guest = vs.guest
    config = MachineConfig(vs.name, vcpus=vs.vcpus, memory_mib=vs.memory_mib, pvtime=vs.pvtime,
                           cpu=guest.cpu, lpt_pv_hz=vs.lpt_pv_hz)
    if isinstance(guest, ElfGuestSpec):
        config.instructions_per_sec = guest.instructions_per_sec
    machine = Machine(kvm, config)
    state.machine = machine
    if isinstance(guest, ModelGuestSpec):
        workload = Workload(busy_ns=(guest.busy_us[0] * US, guest.busy_us[1] * US),
                            idle_ns=(guest.idle_us[0] * US, guest.idle_us[1] * US),
                            seed=spec.seed * 1_000_003 + index)
        kernel = ModelKernel(KernelOptions(hz=guest.hz, steal_acc=guest.steal_acc, nohz_idle=guest.nohz_idle,
                                           workload=workload,
                                           tick_observer=lambda i, ns, late: box[0].ticks.append(
                                               (box[0].host.now_ns(), ns, late))))
        machine.load_model_guest(kernel)
    elif isinstance(guest, ElfGuestSpec):
        # vCPU 0 starts at the entry; the others stay powered off until the guest's PSCI CPU_ON.
        state.image = guest.image if guest.image is not None else str(elf_image_path(guest, scenario.source))
        machine.load_elf(elf_image(guest, scenario.source))
    threads = []
    hypercalls = _HypercallObserver(recorder)
    for vcpu in machine.vcpus:
        thread = VcpuThread(machine, vcpu)
        probe = _probe(vs, machine, vcpu, thread, kernel, state)
        cpus = [vs.pin[vcpu.id]] if vs.pin is not None else vs.cpus
        task = _spawn(host, sched, recorder, kinds, f"{vs.name}/vcpu{vcpu.id}", _VcpuBody(thread, probe, state),
                      "vcpu", nice=vs.nice, cpus=cpus, probe=probe)
        thread.task = task
        # A powered-off vCPU's thread blocks in KVM_RUN until CPU_ON wakes it.
        vcpu.set_wake_callback(partial(sched.wake, task))
        hypercalls.vcpus[vcpu.id] = (host, task, probe)
        threads.append(thread)
    machine.vm.subscribe_hypercalls(hypercalls)
    if vs.vmm_thread is not None:
        body = PeriodicBurst(vs.vmm_thread.burst_us * US, vs.vmm_thread.period_us * US)
        _spawn(host, sched, recorder, kinds, f"{vs.name}/vmm", body, "vmm", nice=vs.nice, cpus=vs.cpus)
    box.append(_Vm(vs, host, machine, threads, kernel, state))
    return box[0]


def _probe(vs: VmSpec, machine: Machine, vcpu: Vcpu, thread: VcpuThread, kernel: ModelKernel | None,
           state: _VmState, *, carried: int = 0) -> VcpuProbe:
    """How to read a vCPU's steal; `carried` is its truth on the hosts it was migrated from."""

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
        return _console_steal(state.console_stat(machine), vcpu.id)

    probe = VcpuProbe(f"{vs.name}/vcpu{vcpu.id}", truth, record, guest,
                      guest_before=0 if kernel is not None else -1)
    return probe


def _console_steal(stat: ConsoleProcStat, cpu: int) -> int | None:
    """A printed guest's steal in ns: its `steal_ns` line, else its /proc/stat line in USER_HZ."""
    if cpu in stat.steal_ns:
        return stat.steal_ns[cpu]
    if cpu in stat.cpus:
        return stat.cpus[cpu][PROC_STAT_STEAL] * (NSEC_PER_SEC // USER_HZ)
    return None


def _no_guest_steal_note(vm: _Vm, cpu: int) -> str:
    """Why an ELF guest's steal is not known: it prints it at its end, which did not come."""
    stopped = vm.machine.stopped
    if stopped is None:
        return ("still running at the end of the run: it prints /proc/stat when it finishes "
                "(give it a duration_ms below the scenario's)")
    if vm.state.console_stat(vm.machine).cpus:
        return f"no cpu{cpu} line on its console"
    return f"no /proc/stat on its console (stopped: {stopped})"


class _HypercallObserver:
    """A VM's hypercalls (through KVM's tracepoint), for the recorder and each vCPU's steal probe."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.vcpus: dict[int, tuple[Host, Task, VcpuProbe]] = {}  # vCPU id -> its host, thread, probe

    def __call__(self, event: HypercallEvent) -> None:
        host, task, probe = self.vcpus[event.vcpu_id]
        if event.baseline_reset:
            probe.st_baseline_ns = task.run_delay_ns
        self.recorder.on_hypercall(host, task, host.now_ns(), event)


def _collect(spec: ScenarioSpec, source: str, duration: int, hosts: list[Host], vms: list[_Vm],
             recorder: Recorder, scheds: dict[str, Scheduler], core: EventCore,
             kinds: dict[tuple[str, int], str]) -> RunResult:
    rows: list[VcpuRow] = []
    series: dict[str, dict[str, np.ndarray]] = {}
    for vm in vms:
        end = duration if vm.state.stopped_ns is None else min(duration, vm.state.stopped_ns)
        stat = vm.state.console_stat(vm.machine) if vm.kernel is None else None
        for thread in vm.threads:
            task = thread.task
            assert task is not None
            cpu = thread.vcpu.id
            probe = recorder.probes[(vm.host.name, task.tid)]
            first_t = vm.state.first_run_ns.get(cpu, end)
            guest = probe.guest()
            record = probe.record()
            proc_stat: int | None = None if guest is None else guest // (NSEC_PER_SEC // USER_HZ)
            total: int | None = None
            note: str | None = None
            if stat is not None:
                if cpu in stat.cpus:  # what the guest printed, not a conversion of its ns
                    proc_stat, total = stat.cpus[cpu][PROC_STAT_STEAL], sum(stat.cpus[cpu])
                if guest is None:
                    note = _no_guest_steal_note(vm, cpu)
            rows.append(VcpuRow(
                vm.host.name, vm.spec.name, cpu, task.name, task.tid, vm.spec.pvtime,
                vm.spec.guest.kind, probe.truth(), record, guest, proc_stat,
                max(0, end - first_t), task.run_time_ns, task.timeslices, thread.vcpu.stats.loads,
                total, note))
            series[probe.key] = recorder.sampled(probe)
    tasks = [TaskRow(h.name, t.name, t.tid, kinds.get((h.name, t.tid), "noise"), *t.schedstat())
             for h in hosts for t in h.tasks]
    vm_rows = [VmRow(vm.host.name, vm.spec.name, "model" if vm.kernel is not None else f"elf:{vm.state.image}",
                     vm.machine.stopped,
                     vm.kernel.proc_stat() if vm.kernel is not None
                     else "\n".join(vm.state.console_stat(vm.machine).lines),
                     vm.state.console(vm.machine), vm.state.stopped_ns, vm.machine.exit_status)
               for vm in vms]
    occupancy = {(h.name, c): recorder.busy[h.name][c] for h in hosts for c in range(h.ncpus)}
    stats = {
        "events": getattr(core, "processed", -1),
        "segments": sum(s.segments for s in scheds.values()),
        "context_switches": sum(s.switches for s in scheds.values()),
        "late_reschedules": sum(s.late_reschedules for s in scheds.values()),
        "hypercalls_traced": recorder.hypercalls,
    }
    pids = {h.name: recorder.pid[h.name] for h in hosts}
    names = {(recorder.pid[h.name], t.tid): t.name for h in hosts for t in h.tasks}
    return RunResult(spec, source, duration, rows, tasks, vm_rows, recorder.grid(), series, occupancy,
                     recorder.events, pids, names, {h.name: h.ncpus for h in hosts}, stats)


__all__ = ["CATEGORIES", "ClockRow", "MigrationRow", "MigrationStatus", "RunResult", "TaskRow", "VcpuRow", "VmRow",
           "run"]
