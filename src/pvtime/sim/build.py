"""Build a scenario's world: hosts and their schedulers, VMs with their vCPU threads, noise tasks,
and the migrations planned at their times. Machines and vCPU threads come from `vmm.builder`."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.host import CpuHog, EventCore, Host, PeriodicBurst, Scheduler, Task, TaskBody
from pvtime.host.events import PRIO_WAKE
from pvtime.kvm import Kvm
from pvtime.sim.migration import LinkSpec, MigrationDriver
from pvtime.sim.observe import HypercallObserver, VcpuBody, VcpuProbe, VmState
from pvtime.sim.recorder import Recorder, StealProbe
from pvtime.sim.scenario import (
    ElfGuestSpec, LinuxGuestSpec, MigrationSpec, ModelGuestSpec, Scenario, VmSpec, elf_image, elf_image_path,
    linux_boot,
)
from pvtime.vmm import Machine, MachineConfig, Placement, VcpuThread, build_machine, start_vcpu_threads

US = 1000
MS = 1_000_000


@dataclass
class SimVm:
    """A scenario's VM: where it runs now (a migration moves it), its vCPU threads and guest."""

    spec: VmSpec
    host: Host
    machine: Machine
    threads: list[VcpuThread]
    kernel: ModelKernel | None  # a model guest's kernel (None: an ELF guest)
    state: VmState


@dataclass
class PlannedMigration:
    """A [[migration]] of the scenario; its driver once its time has come."""

    spec: MigrationSpec
    driver: MigrationDriver | None = None


@dataclass
class World:
    """Everything a run builds, in the order it was built."""

    scenario: Scenario
    core: EventCore
    duration_ns: int
    hosts: list[Host]
    scheds: dict[str, Scheduler]  # host name -> its scheduler
    kvms: dict[str, Kvm]  # host name -> its KVM
    recorder: Recorder
    kinds: dict[tuple[str, int], str] = field(default_factory=dict)  # (host, tid) -> task category
    vms: list[SimVm] = field(default_factory=list)
    migrations: list[PlannedMigration] = field(default_factory=list)

    def host(self, name: str) -> Host:
        return self.hosts[[h.name for h in self.hosts].index(name)]

    def spawn(self, host: Host, name: str, body: TaskBody, kind: str, *, nice: int = 0,
              cpus: list[int] | None = None) -> Task:
        """A host task (noise or a VMM thread) of category `kind`, runnable now."""
        task = host.spawn(name)
        self.register(host, task, kind)
        self.scheds[host.name].add(task, body, nice=nice, cpus=cpus)
        return task

    def register(self, host: Host, task: Task, kind: str, probe: StealProbe | None = None, *,
                 at_ns: int | None = None) -> None:
        self.recorder.register(host, task, kind, probe, at_ns=at_ns)
        self.kinds[(host.name, task.tid)] = kind


def build(scenario: Scenario, core: EventCore, *, max_segment_ns: int | None = None,
          end_ns: int | None = None) -> World:
    """The hosts, VMs, noise and planned migrations of `scenario`, on the event core `core`; the
    schedulers end at `end_ns` (default: the scenario's end)."""
    spec = scenario.spec
    duration = spec.duration_ms * MS
    hosts = [Host(h.counter_hz, ncpus=h.cpus, schedstats=h.schedstats, name=h.name) for h in spec.host]
    recorder = Recorder(hosts, duration, spec.sample_ms * MS, trace=spec.trace)
    end = duration if end_ns is None else end_ns
    scheds = {host.name: Scheduler(host, core, hs.sched.config(), end_ns=end, observer=recorder,
                                   max_segment_ns=max_segment_ns)
              for hs, host in zip(spec.host, hosts)}
    world = World(scenario, core, duration, hosts, scheds, {h.name: Kvm(h) for h in hosts}, recorder)
    for i, vs in enumerate(spec.vm):
        world.vms.append(build_vm(world, i, vs))
    for ns in spec.noise:
        host = world.host(ns.host)
        for k in range(ns.count):
            name = ns.name if ns.count == 1 else f"{ns.name}.{k}"
            body: TaskBody
            if ns.kind == "hog":
                body = CpuHog(ns.duty, ns.period_us * US, ns.phase_us * US)
            else:
                assert ns.burst_us is not None
                body = PeriodicBurst(ns.burst_us * US, ns.period_us * US, ns.phase_us * US)
            world.spawn(host, name, body, "noise", nice=ns.nice, cpus=ns.cpus)
    for ms in spec.migration:
        plan_migration(world, ms)
    return world


def build_vm(world: World, index: int, vs: VmSpec) -> SimVm:
    """VM `index` of the scenario, its vCPU threads and its VMM thread, on its host."""
    scenario = world.scenario
    host = world.host(vs.host)
    guest = vs.guest
    config = MachineConfig(vs.name, vcpus=vs.vcpus, memory_mib=vs.memory_mib, pvtime=vs.pvtime,
                           cpu=guest.cpu, lpt_pv_hz=vs.lpt_pv_hz)
    kernel: ModelKernel | None = None
    state = VmState()
    if isinstance(guest, ElfGuestSpec):
        config.instructions_per_sec = guest.instructions_per_sec
        state.image = guest.image if guest.image is not None else str(elf_image_path(guest, scenario.source))
        machine = build_machine(world.kvms[host.name], config, image=elf_image(guest, scenario.source))
    elif isinstance(guest, LinuxGuestSpec):
        config.instructions_per_sec = guest.instructions_per_sec
        config.vgic = True
        state.image = "linux" if guest.kernel is None else guest.kernel
        machine = build_machine(world.kvms[host.name], config, linux=linux_boot(guest, scenario.source))
    else:
        assert isinstance(guest, ModelGuestSpec)
        workload = Workload(busy_ns=(guest.busy_us[0] * US, guest.busy_us[1] * US),
                            idle_ns=(guest.idle_us[0] * US, guest.idle_us[1] * US),
                            seed=scenario.spec.seed * 1_000_003 + index)
        kernel = ModelKernel(KernelOptions(hz=guest.hz, steal_acc=guest.steal_acc, nohz_idle=guest.nohz_idle,
                                           workload=workload, tick_observer=state.on_tick))
        machine = build_machine(world.kvms[host.name], config, program=kernel)
    state.machine = machine
    vm = SimVm(vs, host, machine, [], kernel, state)
    vm.threads = start_vm_threads(world, vm)
    if vs.vmm_thread is not None:
        body = PeriodicBurst(vs.vmm_thread.burst_us * US, vs.vmm_thread.period_us * US)
        world.spawn(host, f"{vs.name}/vmm", body, "vmm", nice=vs.nice, cpus=vs.cpus)
    return vm


def start_vm_threads(world: World, vm: SimVm, *, start_ns: int | None = None,
                     migrated: tuple[dict[int, VcpuProbe], int] | None = None) -> list[VcpuThread]:
    """Start `vm.machine`'s vCPU threads on `vm.host`, each observed by a steal probe; `migrated`
    is the vCPUs' probes on the host the VM left, and when it switched over."""
    vs, host, state = vm.spec, vm.host, vm.state
    probes: dict[int, VcpuProbe] = {}
    left, at = migrated if migrated is not None else ({}, None)

    def observed(thread: VcpuThread) -> VcpuBody:
        cpu = thread.vcpu.id
        previous = None if at is None or cpu not in left else (left[cpu], at)
        probe = probes[cpu] = VcpuProbe(vs, thread, vm.kernel, state, host.name, previous)
        return VcpuBody(thread, probe, state, world.recorder.sample_ns)

    threads = start_vcpu_threads(vm.machine, host, world.scheds[host.name], start_ns=start_ns,
                                 placement=Placement(vs.nice, vs.cpus, vs.pin), body=observed)
    for thread in threads:
        assert thread.task is not None
        world.register(host, thread.task, "vcpu", probes[thread.vcpu.id], at_ns=at)
    state.probes = probes
    vm.machine.vm.subscribe_hypercalls(HypercallObserver(world.recorder, host, threads, probes))
    return threads


def plan_migration(world: World, ms: MigrationSpec) -> PlannedMigration:
    """At `ms`'s time, migrate its VM from wherever it is then to `ms.to`."""
    planned = PlannedMigration(ms)
    world.migrations.append(planned)
    vm = next(v for v in world.vms if v.spec.name == ms.vm)

    def start(machine: Machine, now: int) -> list[VcpuThread]:
        # The record travels in guest RAM, so the truth does too: each vCPU's steal on the
        # source (stopped now), plus what its new thread waits.
        left = dict(vm.state.probes)
        vm.state.console_before += bytes(vm.machine.console)
        vm.host, vm.machine = world.host(ms.to), machine
        vm.state.machine = machine
        vm.threads = start_vm_threads(world, vm, migrated=(left, now))
        return vm.threads

    def begin() -> None:
        link = LinkSpec(bandwidth_bytes_per_s=ms.bandwidth_mbit * 125_000, setup_ns=ms.setup_us * US,
                        max_rounds=ms.max_rounds)
        planned.driver = MigrationDriver(world.core, vm.machine, vm.threads, world.scheds[vm.host.name],
                                         world.kvms[ms.to], start, at_ns=world.core.now, link=link)

    world.core.at(ms.at_ms * MS, PRIO_WAKE, begin)
    return planned
