"""A VM with LPT driven by hand: first runs, guest reads at chosen virtual times, save/restore."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvtime.abi.sysregs import CTL_ISTATUS
from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CVAL,
    KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL,
)
from pvtime.abi.widths import U64
from pvtime.cpu.model import GuestView
from pvtime.guest.lpt import LptClock
from pvtime.host import Host, Task
from pvtime.kvm import Kvm, Quirk
from pvtime.vmm import Machine, MachineConfig, StopReason
from pvtime.vmm.migration import ModelHandover, restore, save
from tests.conftest import ScriptCpu, run_guest_code

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
        """vCPU i as its guest code sees it (inside `guest`)."""
        cpu = self.machine.cpus[i]
        assert isinstance(cpu, ScriptCpu)
        return cpu.view

    def guest(self, t: int, fn):
        """Call fn(cpu) as guest code on vCPU 0 at virtual time t (in one KVM_RUN)."""
        cpu = self.machine.cpus[0]
        assert isinstance(cpu, ScriptCpu)
        view = cpu.view
        return run_guest_code(self.host, self.task, self.machine.vcpus[0], cpu, lambda: fn(view), start_ns=t)[1]

    def lpt_ipa(self) -> int:
        """Where the LPT record is (KVM_ARM_VM_PVTIME_LPT_IPA)."""
        return self.machine.vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA)

    def write(self, gpa: int, data: bytes) -> None:
        """The VMM writes guest memory (its own buffers), as a concurrent host would."""
        for _, base, buf in self.machine.regions():
            if base <= gpa and gpa + len(data) <= base + len(buf):
                buf[gpa - base:gpa - base + len(data)] = data
                return
        raise ValueError(f"{gpa:#x}: not in the VM's memory")

    def irq_pending(self) -> bool:
        """vCPU 0's virtual timer asserts its (unmasked) interrupt: CNTV_CTL.ISTATUS, now."""
        return bool(self.machine.vcpus[0].get_one_reg(KVM_REG_ARM_TIMER_CTL) & CTL_ISTATUS)

    def fires_at(self, physical: bool) -> int:
        """The virtual time vCPU 0's timer asserts (host view): CVAL plus the VM's counter offset."""
        vcpu = self.machine.vcpus[0]
        cval = vcpu.get_one_reg(KVM_REG_ARM_PTIMER_CVAL if physical else KVM_REG_ARM_TIMER_CVAL)
        count = vcpu.get_one_reg(KVM_REG_ARM_PTIMER_CNT if physical else KVM_REG_ARM_TIMER_CNT)
        offset = (self.host.counter() - count) & U64  # the counters' offsets are independent
        return self.host.counter_to_ns(cval + offset)

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
    machine = Machine(Kvm(host), MachineConfig("t", vcpus=vcpus, memory_mib=1, lpt_pv_hz=pv_hz, quirks=quirks),
                      cpus=ScriptCpu)
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
                      downtime_ns=t_restore - t_save if count_downtime else None, cpus=ScriptCpu)
    vm.machine.stop(StopReason.migrated(host.name))
    new = Vm(host, machine, host.spawn("vcpu"), clock=vm.clock, reads=vm.reads)
    new.run(t_restore)
    return new
