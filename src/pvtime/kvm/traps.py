"""One vCPU as the hypervisor keeps it, and the traps its CPU backend calls (struct kvm_vcpu).

A `Vcpu` (the fd a VMM holds) owns one `Traps` and hands it to its CPU backend's `execute()`:
the backend calls it for what the hardware would trap to EL2 (`pvtime.cpu.backend.VcpuTraps`:
HVC/SMC, trapped MRS/MSR, guest RAM through the memslots, the in-kernel vGIC's registers, the
IRQ input: the timers' line, or the vGIC's CPU interface when the VM has one). PSCI
acts on vCPUs through it too (CPU_ON, CPU_OFF, CPU_SUSPEND, system events). kvm-internal: a VMM
reaches a vCPU through its fd's ioctls only.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvtime.abi import sysregs
from pvtime.abi.sysregs import SysReg
from pvtime.abi.uapi import REG_PC, reg_x
from pvtime.cpu.backend import Conduit, CpuBackend, GuestFault, GuestRegion
from pvtime.cpu.fastpath import CounterParams, HypercallAnswer
from pvtime.host.task import Task
from pvtime.kvm import hypercalls, pvtime
from pvtime.kvm.arch_timer import ArchTimer
from pvtime.kvm.vgic import mmio

if TYPE_CHECKING:
    from pvtime.kvm.vm import VmState


@dataclass
class VcpuStats:
    """Counters a VMM or benchmark can read (like KVM's binary stats)."""

    runs: int = 0
    loads: int = 0
    hypercalls: int = 0


def reset_mpidr(vcpu_id: int) -> int:
    """MPIDR_EL1 of vCPU `vcpu_id`, as KVM's reset_mpidr (arch/arm64/kvm/sys_regs.c) sets it.

    16 vCPUs per Aff0 (the GICv3 ICC_SGIxR target list addresses 16 CPUs per cluster), then
    Aff1 and Aff2: Aff0 = id & 0xf, Aff1 = (id >> 4) & 0xff, Aff2 = (id >> 12) & 0xff; bit 31 RES1.
    """
    return (1 << 31) | (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16


class Traps:
    """The hypervisor side of a vCPU: its registers' engine, stolen time, timers, power state."""

    def __init__(self, vm: VmState, vcpu_id: int, cpu: CpuBackend) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.index = len(vm.vcpus)  # its place in kvm->vcpus: the vGIC names vCPUs by it
        self.mpidr = reset_mpidr(vcpu_id)
        self.cpu = cpu
        self.steal = pvtime.StealState()
        self.timer = ArchTimer(vm.counter)
        self.stats = VcpuStats()
        self.powered_off = False
        self.system_event: int | None = None  # a KVM_EXIT_SYSTEM_EVENT the current run() returns
        self.in_wfi = False  # blocked in PSCI CPU_SUSPEND until an interrupt is pending
        self.blocked: Task | None = None  # the thread blocked in KVM_RUN (vcpu->wait), if any
        self.running = False  # inside KVM_RUN (vcpu->mutex held: lock_all_vcpus fails)
        self.has_run_once = False  # kvm_vcpu_first_run_init done
        self.irq_lines = 0  # KVM_IRQ_LINE without a vGIC: bit 0 the IRQ input, bit 1 the FIQ input

    def __repr__(self) -> str:
        return f"Traps({self.vm.name}/{self.id})"

    # --- PSCI's effects on a vCPU --------------------------------------------------------------

    def reset(self) -> None:
        """kvm_reset_vcpu (KVM_ARM_VCPU_INIT, PSCI CPU_ON): registers, then the timers."""
        self.in_wfi = False
        self.cpu.reset()  # core registers (EL1h, DAIF masked) and EL1 system registers
        self.mpidr = reset_mpidr(self.id)  # kvm_reset_sys_regs runs reset_mpidr (of vcpu_id) too
        self.timer.cntkctl = 0  # kvm_reset_sys_regs: CNTKCTL_EL1 is reset_val 0
        self.timer.reset()  # kvm_timer_vcpu_reset
        if self.vm.vgic is not None:  # ... which also clears the timer PPIs in the vGIC
            self.vm.vgic.reset_timer_irqs(self.index)

    def power_off(self) -> None:
        """PSCI CPU_OFF: the vCPU stops until another vCPU turns it on."""
        self.powered_off = True

    def power_on(self, entry: int, context_id: int) -> None:
        """PSCI CPU_ON from another vCPU: reset at `entry` with x0 = `context_id`, and wake it."""
        self.powered_off = False
        self.reset()
        self.cpu.core_regs[REG_PC] = entry
        self.cpu.core_regs[reg_x(0)] = context_id
        if self.blocked is not None:  # kvm_vcpu_wake_up: the thread waiting in KVM_RUN
            self.vm.host.wake(self.blocked)

    def wfi(self) -> None:
        """PSCI CPU_SUSPEND (kvm_psci_vcpu_suspend -> kvm_vcpu_wfi): block until an interrupt.

        A pending interrupt ends the wait at once (kvm_vcpu_check_block), so the call returns
        without blocking. Otherwise the backend stops after the trap (`exit_requested`), and
        `Vcpu.run()` keeps the vCPU halted until a timer asserts; the guest then continues after
        its HVC/SMC with the x0 the call set. As for WFI, the interrupt ends the wait whether
        PSTATE.I masks it or not, and the wait survives `run()` calls but not a reset.
        """
        if not self.irq_pending():
            self.in_wfi = True

    def set_irq_line(self, line: int, level: bool) -> None:
        """vcpu_interrupt_line (KVM_IRQ_LINE without a vGIC): the VMM drives the vCPU's IRQ (0) or
        FIQ (1) input; raising the IRQ wakes the vCPU's thread if it waits in KVM_RUN."""
        before = self.irq_lines
        self.irq_lines = before | 1 << line if level else before & ~(1 << line)
        if self.irq_lines != before and self.blocked is not None and not self.powered_off and self.irq_pending():
            self.vm.host.wake(self.blocked)

    def request_system_event(self, event_type: int) -> None:
        """Make the current run() return a KVM_EXIT_SYSTEM_EVENT."""
        self.system_event = event_type

    def current_task(self) -> Task:
        """The host thread executing this vCPU now."""
        return self.vm.host.current_task()

    # --- the traps (the VcpuTraps protocol the CPU backend calls) ------------------------------

    def hypercall(self, regs: list[int], conduit: Conduit, imm: int) -> None:
        """HVC/SMC: the SMCCC dispatch."""
        hypercalls.handle(self, regs, conduit, imm)

    def read_sysreg(self, reg: SysReg) -> int:
        """A trapped MRS."""
        if reg == sysregs.CNTVCT_EL0:  # the hot path: counter reads dominate the traps
            return self.timer.cntvct(self.vm.host.counter())
        if reg == sysregs.MPIDR_EL1:
            return self.mpidr
        value = self.timer.read(reg, self.vm.host.counter(), self.vm.guest_counter_hz())
        if value is None:
            raise GuestFault(f"MRS of {sysregs.name(reg)}: register not implemented", instruction=f"mrs x?, {sysregs.name(reg)}")
        return value

    def write_sysreg(self, reg: SysReg, value: int) -> None:
        """A trapped MSR."""
        if not self.timer.write(reg, value, self.vm.host.counter()):
            raise GuestFault(f"MSR of {sysregs.name(reg)}: register not writable", instruction=f"msr {sysregs.name(reg)}, x?")

    def read_memory(self, gpa: int, size: int) -> bytes | None:
        """Guest RAM through the memslots."""
        return self.vm.memory.read(gpa, size)

    def write_memory(self, gpa: int, data: bytes) -> bool:
        """Guest RAM through the memslots (read-only slots refuse)."""
        return self.vm.memory.write(gpa, data)

    def irq_pending(self) -> bool:
        """The vCPU's IRQ input is asserted now: by the vGIC's CPU interface when the VM has one,
        else by a timer or the VMM's KVM_IRQ_LINE."""
        vgic = self.vm.vgic
        if vgic is not None:
            return vgic.irq_signaled(self.index)
        return bool(self.irq_lines & 1) or self.timer.irq_pending(self.vm.host.counter())

    def next_irq_ns(self) -> int | None:
        """When an armed timer next asserts (with a vGIC: next rises), in host virtual time."""
        if self.vm.vgic is not None:
            count = self.timer.next_rise_host_count(self.vm.host.counter())
        else:
            count = self.timer.next_fire_host_count()
        return None if count is None else self.vm.host.counter_to_ns(max(count, 0))

    # --- the fast paths (pvtime.cpu.fastpath.FastPathTraps): read_sysreg's and hypercall's
    # answers as parameters, for a backend that serves them itself -------------------------------

    def counter_params(self) -> CounterParams:
        """CNTVCT_EL0 and CNTPCT_EL0 as `read_sysreg` computes them (ArchTimer.cntvct, .cntpct of
        Host.counter), and CNTKCTL_EL1 for the EL0 check."""
        counter = self.timer.counter
        return CounterParams(self.vm.host.counter_hz, counter.voffset, counter.poffset, self.timer.cntkctl)

    def constant_hypercalls(self) -> tuple[HypercallAnswer, ...]:
        """The SMCCC calls whose answers stay fixed while the vCPU runs (hypercalls.constant_answers)."""
        return hypercalls.constant_answers(self)

    def note_hypercalls(self, count: int) -> None:
        """The backend answered `count` of `constant_hypercalls()` itself."""
        self.stats.hypercalls += count

    def mmio_read(self, gpa: int, size: int) -> bytes | None:
        """A load from a device KVM emulates itself (kvm_io_bus_read: the vGIC's frames); None
        when no in-kernel device is there, and the access exits to the VMM."""
        vgic = self.vm.vgic
        frame = None if vgic is None else vgic.frame_of(gpa, size)
        if frame is None:
            return None
        assert vgic is not None
        cpu_frame, offset = frame
        read = mmio.cpu_read if cpu_frame else mmio.dist_read
        return (read(vgic, self.index, offset, size) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def mmio_write(self, gpa: int, data: bytes) -> bool:
        """A store to a device KVM emulates itself, or to a coalesced-MMIO zone with room in the
        ring (kvm_io_bus_write); False when none is there."""
        vgic = self.vm.vgic
        frame = None if vgic is None else vgic.frame_of(gpa, len(data))
        if frame is None:
            return self.vm.coalesced_mmio.write(gpa, data)
        assert vgic is not None
        cpu_frame, offset = frame
        write = mmio.cpu_write if cpu_frame else mmio.dist_write
        write(vgic, self.index, offset, len(data), int.from_bytes(data, "little"))
        return True

    def exit_requested(self) -> bool:
        """A trap wants to leave guest execution: a system event, CPU_OFF, or CPU_SUSPEND's wait."""
        return self.system_event is not None or self.powered_off or self.in_wfi

    def memslots(self) -> Sequence[GuestRegion]:
        """The VM's memslots, for a backend that maps guest RAM into its engine: the same object
        until they change (`GuestMemory.snapshot`)."""
        return self.vm.memory.snapshot()
