"""A VM with LPT driven by hand: first runs, guest reads at chosen virtual times, save/restore."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvtime.cpu.model import GuestView
from pvtime.guest.lpt import LptClock
from pvtime.host import Host, Task
from pvtime.kvm import Kvm, Quirk
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import ModelHandover, restore, save

NS = 1_000_000_000


@dataclass
class Vm:
    """One machine on one host, with the host task that runs its vCPUs."""

    host: Host
    machine: Machine
    task: Task
    clock: LptClock | None = None
    reads: list[tuple[int, int]] = field(default_factory=list)

    def run(self, t: int) -> None:
        """KVM_RUN of every vCPU at virtual time t (no program: the run returns at once)."""
        with self.host.on_cpu(self.task, 0, start_ns=t):
            for vcpu in self.machine.vcpus:
                vcpu.run()

    def view(self, i: int = 0) -> GuestView:
        return GuestView(self.machine.vcpus[i])

    def guest(self, t: int, fn):
        """Call fn(cpu) as guest code on vCPU 0 at virtual time t."""
        with self.host.on_cpu(self.task, 0, start_ns=t):
            return fn(self.view())

    def pv(self, t: int, physical: bool = False) -> int:
        """The guest's PV counter at virtual time t, through its LPT clocksource."""
        def read(cpu):
            if self.clock is None:
                self.clock = LptClock.probe(cpu, [])
                assert self.clock is not None, "LPT probe failed"
            return self.clock.read(cpu, physical)
        value = self.guest(t, read)
        self.reads.append((t, value))
        return value


def boot(native_hz: int, pv_hz: int | None, *, t: int = 0, vcpus: int = 1, quirks: Quirk = Quirk.NONE) -> Vm:
    host = Host(native_hz, name=f"h{native_hz}")
    machine = Machine(Kvm(host), MachineConfig("t", vcpus=vcpus, memory_mib=1, lpt_pv_hz=pv_hz, quirks=quirks))
    vm = Vm(host, machine, host.spawn("vcpu"))
    vm.run(t)
    return vm


def migrate(vm: Vm, native_hz: int, t_save: int, t_restore: int, *, count_downtime: bool = True) -> Vm:
    """Save vm at t_save, restore it on a new host of native_hz at t_restore, first-run it there."""
    vm.machine.pause()
    handover = ModelHandover()
    data = save(vm.machine, now_ns=t_save, handover=handover)
    host = Host(native_hz, name=f"h{native_hz}")
    host.clock_ns = t_restore
    machine = restore(Kvm(host), data, handover=handover, now_ns=t_restore,
                      downtime_ns=t_restore - t_save if count_downtime else None)
    vm.machine.stop("migrated")
    new = Vm(host, machine, host.spawn("vcpu"), clock=vm.clock, reads=vm.reads)
    new.run(t_restore)
    return new
