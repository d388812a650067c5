"""A vCPU: device attributes, ONE_REG, power state, and `run()` with vcpu_load's stolen-time update."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvtime.abi.widths import U64
from pvtime.abi import sysregs
from pvtime.abi.errno import E2BIG, EBUSY, EINVAL, ENOENT, ENXIO
from pvtime.abi.sysregs import SysReg
from pvtime.abi.uapi import (
    KVM_ARM_VCPU_PVTIME_CTRL, KVM_INTERNAL_ERROR_EMULATION, KVM_REG_ARM_CORE,
    KVM_REG_ARM_COPROC_MASK, KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_TIMER_CNT,
    KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL, KVM_REG_ARM_PTIMER_CNT,
    KVM_REG_ARM_PTIMER_CTL, KVM_REG_ARM_PTIMER_CVAL, KVM_REG_SIZE_MASK, REG_PC, reg_size, reg_x,
    KVM_REG_ARM_CNTKCTL_EL1, KVM_REGS_U32, CORE_REG_IDS, EL1_SYSREG_IDS, core_reg_size,
)
from pvtime.cpu.model import ModelCpu
from pvtime.cpu.backend import Conduit, CpuBackend, GuestFault, GuestRegion, Stop, StopKind
from pvtime.guest.machine import ModelProgram
from pvtime.host.task import Task
from pvtime.kvm import hypercalls, pvtime
from pvtime.kvm.arch_timer import ArchTimer
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user
from pvtime.kvm.exits import (
    Exit, HaltExit, InternalErrorExit, IntrExit, MmioExit, SemihostingExit, SystemEventExit,
)

if TYPE_CHECKING:
    from pvtime.kvm.vm import Vm



@dataclass
class VcpuStats:
    """Counters a VMM or benchmark can read (like KVM's binary stats)."""

    runs: int = 0
    loads: int = 0
    hypercalls: int = 0


class Vcpu:
    """One virtual CPU of a `Vm`; create it with `Vm.create_vcpu`."""

    def __init__(self, vm: Vm, vcpu_id: int, cpu: CpuBackend) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.mpidr = reset_mpidr(vcpu_id)
        self.cpu = cpu
        self.steal = pvtime.StealState()
        self.timer = ArchTimer(vm.counter)
        self.stats = VcpuStats()
        self.powered_off = False
        # kvm_run.immediate_exit: run() finishes a completed MMIO access and returns at once
        # (-EINTR), entering nothing -- how a VMM quiesces a vCPU before saving its state.
        self.immediate_exit = False
        self._system_event: int | None = None
        self._in_wfi = False  # blocked in PSCI CPU_SUSPEND until an interrupt is pending
        self._wake: Callable[[], None] | None = None
        self._deadline_mark: tuple[int, int] | None = None  # (tid, timeslices) at a deadline exit

    def __repr__(self) -> str:
        return f"Vcpu({self.vm.name}/{self.id})"

    # --- device attributes (KVM_{SET,GET,HAS}_DEVICE_ATTR on the vCPU fd) -------------------

    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR; `value` is the u64 at attr.addr (an int, or 8 little-endian bytes)."""
        if group != KVM_ARM_VCPU_PVTIME_CTRL:
            raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")
        pvtime.set_ipa(self.steal, self.vm.pvtime_supported(), attr, value, self.vm.memory)

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR: the attribute's u64 value."""
        if group != KVM_ARM_VCPU_PVTIME_CTRL:
            raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")
        return pvtime.get_ipa(self.steal, self.vm.pvtime_supported(), attr)

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR: returns if supported, raises ENXIO otherwise."""
        if group != KVM_ARM_VCPU_PVTIME_CTRL:
            raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")
        pvtime.has_ipa(self.vm.pvtime_supported(), attr)

    # --- ONE_REG ---------------------------------------------------------------------------

    def set_one_reg(self, reg_id: int, value: object) -> None:
        """KVM_SET_ONE_REG: core registers, timer registers and the firmware bitmap."""
        size = self._reg_size(reg_id)
        val = read_user(value, size, f"register {reg_id:#x}")
        if reg_id == KVM_REG_ARM_STD_HYP_BMAP:
            hypercalls.set_std_hyp_bmap(self.vm, val)
        elif reg_id & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            try:
                self.cpu.core_regs[reg_id] = val
            except KeyError:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: unknown") from None
            except ValueError as err:
                raise KvmError(EINVAL, f"core register {reg_id:#x}: {err}") from None
        elif reg_id in _TIMER_REGS:
            self._set_timer_reg(reg_id, val)
        elif reg_id in EL1_SYSREG_IDS:
            try:
                self.sys_regs[reg_id] = val
            except ValueError as err:
                raise KvmError(EINVAL, f"{sysregs.name(EL1_SYSREG_IDS[reg_id])}: {err}") from None
        else:
            raise KvmError(ENOENT, f"register {reg_id:#x}: unknown")

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG."""
        self._reg_size(reg_id)
        if reg_id == KVM_REG_ARM_STD_HYP_BMAP:
            return self.vm.std_hyp_bmap
        if reg_id & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            try:
                return self.cpu.core_regs.get(reg_id, 0)
            except KeyError:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: unknown") from None
        if reg_id in _TIMER_REGS:
            return self.read_sysreg(_TIMER_REGS[reg_id])
        if reg_id in EL1_SYSREG_IDS:
            return self.sys_regs[reg_id]
        raise KvmError(ENOENT, f"register {reg_id:#x}: unknown")

    @property
    def sys_regs(self) -> MutableMapping[int, int]:
        """The EL1 system registers by KVM id, as the CPU backend holds them."""
        return self.cpu.sys_regs

    def get_reg_list(self, n: int | None = None) -> list[int]:
        """KVM_GET_REG_LIST: the id of every register this vCPU has for ONE_REG, in KVM's order
        (core, firmware, timer, then system registers by id). `n` is kvm_reg_list.n: E2BIG when
        it is smaller than the list (the count is in the error message, as KVM writes it to n)."""
        regs = [*CORE_REG_IDS, KVM_REG_ARM_STD_HYP_BMAP,
                KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CVAL,
                KVM_REG_ARM_PTIMER_CTL, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CVAL,
                *sorted([*EL1_SYSREG_IDS, KVM_REG_ARM_CNTKCTL_EL1])]
        if n is not None and n < len(regs):
            raise KvmError(E2BIG, f"KVM_GET_REG_LIST: n = {n}, the vCPU has {len(regs)} registers")
        return regs

    def _reg_size(self, reg_id: int) -> int:
        """The size a register id encodes; ENOENT when a known register is named with another size."""
        size = reg_size(reg_id)
        base = reg_id & ~KVM_REG_SIZE_MASK
        if base & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            # Linux get/set_core_reg: past struct kvm_regs is ENOENT, a bad offset or size EINVAL.
            offset = reg_id & 0xFFFF
            if offset >= KVM_REGS_U32 or offset + size // 4 >= KVM_REGS_U32:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: past the end of struct kvm_regs")
            want = core_reg_size(reg_id)
            if want is None:
                raise KvmError(EINVAL, f"core register {reg_id:#x}: no register at that offset")
            if size != want:
                raise KvmError(EINVAL, f"register {reg_id:#x}: size {size} bytes, the register has {want}")
            return size
        known = (base == KVM_REG_ARM_STD_HYP_BMAP & ~KVM_REG_SIZE_MASK
                 or base in _TIMER_BASES or base in _EL1_BASES)
        if known and size != 8:
            raise KvmError(ENOENT, f"register {reg_id:#x}: size {size} bytes, the register has 8")
        return size

    def _set_timer_reg(self, reg_id: int, val: int) -> None:
        if reg_id == KVM_REG_ARM_TIMER_CNT:
            # Writing CNTVCT sets the VM-wide CNTVOFF, as KVM does since 6.4.
            self.vm.counter.voffset = (self.vm.host.counter() - val) & U64
            self.vm.counter.v_anchor = (val, self.vm.host.counter())  # for an LPT rescale
        elif reg_id == KVM_REG_ARM_PTIMER_CNT:
            self.vm.counter.poffset = (self.vm.host.counter() - val) & U64
            self.vm.counter.p_anchor = (val, self.vm.host.counter())
        else:
            self.timer.write(_TIMER_REGS[reg_id], val, self.vm.host.counter())

    # --- power state ---------------------------------------------------------------------

    def init(self, *, power_off: bool = False) -> None:
        """KVM_ARM_VCPU_INIT: reset the vCPU; KVM_ARM_VCPU_POWER_OFF starts it powered off.

        The stolen-time IPA survives, as in Linux.
        """
        self.powered_off = power_off
        self._system_event = None
        self._reset_vcpu()

    def adopt_model_cpu(self, cpu: CpuBackend) -> None:
        """Model backend, in-process migration only: continue a migrated vCPU's Python program.

        A model guest's execution state is Python objects (its generators), which no stream can
        carry as bytes; the VMM hands the source vCPU's model CPU to this one instead
        (pvtime.vmm.migration). Refused (EBUSY) once the VM has run, EINVAL for another index.
        """
        if self.vm.has_run:
            raise KvmError(EBUSY, f"{self}: the VM has run; a model CPU can only be adopted before")
        if cpu.index != self.id or self.vm.cpu_kind != "model":
            raise KvmError(EINVAL, f"{self}: cannot adopt model CPU {cpu.index}")
        self.cpu = cpu

    def load_model_program(self, program: ModelProgram) -> None:
        """Model backend: install the guest program this vCPU runs from reset (EINVAL otherwise:
        a machine-code vCPU runs what guest RAM holds)."""
        if not isinstance(self.cpu, ModelCpu):
            raise KvmError(EINVAL, f"{self}: a {self.vm.cpu_kind} vCPU runs machine code from guest RAM, "
                                   "not a model program (load an image and set the PC)")
        self.cpu.load(program)

    def power_off(self) -> None:
        """PSCI CPU_OFF: the vCPU stops until another vCPU turns it on."""
        self.powered_off = True

    def power_on(self, entry: int, context_id: int) -> None:
        """PSCI CPU_ON from another vCPU: reset at `entry` with x0 = `context_id`, and wake it."""
        self.powered_off = False
        self._reset_vcpu()
        self.cpu.core_regs[REG_PC] = entry
        self.cpu.core_regs[reg_x(0)] = context_id
        if self._wake is not None:
            self._wake()

    def wfi(self) -> None:
        """PSCI CPU_SUSPEND (kvm_psci_vcpu_suspend -> kvm_vcpu_wfi): block until an interrupt.

        A pending interrupt ends the wait at once (kvm_vcpu_check_block), so the call returns
        without blocking. Otherwise the backend stops after the trap (`exit_requested`), and
        `run()` keeps the vCPU halted until a timer asserts; the guest then continues after its
        HVC/SMC with the x0 the call set. As for WFI, the interrupt ends the wait whether
        PSTATE.I masks it or not, and the wait survives `run()` calls but not a reset.
        """
        if not self.irq_pending():
            self._in_wfi = True

    def _reset_vcpu(self) -> None:
        """kvm_reset_vcpu (KVM_ARM_VCPU_INIT, PSCI CPU_ON): registers, then the timers."""
        self._in_wfi = False
        self.cpu.reset()  # core registers (EL1h, DAIF masked) and EL1 system registers
        self.timer.cntkctl = 0  # kvm_reset_sys_regs: CNTKCTL_EL1 is reset_val 0
        self.timer.reset()  # kvm_timer_vcpu_reset

    def complete_mmio(self, data: bytes) -> None:
        """Supply the data of the last MMIO read exit (kvm_run.mmio.data) before the next run()."""
        self.cpu.complete_mmio(data)

    def set_wake_callback(self, wake: Callable[[], None] | None) -> None:
        """Called when another vCPU powers this one on (kvm_vcpu_wake_up of a blocked thread)."""
        self._wake = wake

    def request_system_event(self, event_type: int) -> None:
        """Make the current run() return a KVM_EXIT_SYSTEM_EVENT."""
        self._system_event = event_type

    # --- KVM_RUN -------------------------------------------------------------------------

    def current_task(self) -> Task:
        """The host thread executing this vCPU now."""
        return self.vm.host.current_task()

    def run(self) -> Exit:
        """KVM_RUN: load the vCPU on the calling task, enter the guest, return the next exit."""
        host = self.vm.host
        slice_ = host.current
        if slice_ is None:
            raise RuntimeError(f"{self}: run() must be called by a host task on a CPU (Host.on_cpu)")
        self.vm.note_first_run()  # HAS_RAN_ONCE is set before immediate_exit is looked at
        if self.immediate_exit:
            self.cpu.complete_pending()
            return IntrExit()
        self.stats.runs += 1
        task = slice_.task
        # A run that ended at the host's deadline is continued, not reloaded, while the thread has
        # not been switched out since (no sched_in, so no kvm_arch_vcpu_load in Linux either).
        if self._deadline_mark != (task.tid, task.timeslices):
            self._vcpu_load(task)
        self._deadline_mark = None
        while True:
            if self.powered_off:
                return HaltExit(None)
            if self._in_wfi:
                if not self.irq_pending():  # kvm_vcpu_check_block
                    return HaltExit(self.next_irq_ns())
                self._in_wfi = False
            stop = self.cpu.execute(self, slice_)
            if not (stop.kind is StopKind.EXIT and self._in_wfi and self._system_event is None):
                return self._exit_for(stop)

    def _vcpu_load(self, task: Task) -> None:
        """kvm_arch_vcpu_load + KVM_REQ_RECORD_STEAL: update the record before guest entry."""
        self.stats.loads += 1
        pvtime.update_stolen_time(self.steal, task, self.vm.memory, self.vm.quirks)

    def _exit_for(self, stop: Stop) -> Exit:
        match stop.kind:
            case StopKind.DEADLINE:
                task = self.vm.host.current_task()
                self._deadline_mark = (task.tid, task.timeslices)
                return IntrExit()
            case StopKind.HALT:
                return HaltExit(self.next_irq_ns())
            case StopKind.POWER_OFF:
                self.powered_off = True
                return HaltExit(None)
            case StopKind.EXIT:
                event, self._system_event = self._system_event, None
                if event is not None:
                    return SystemEventExit(event)
                return HaltExit(None) if self.powered_off else IntrExit()
            case StopKind.MMIO:
                return MmioExit(stop.mmio_addr, stop.mmio_len, stop.mmio_data, stop.mmio_write)
            case StopKind.SEMIHOSTING:
                return SemihostingExit(stop.semihost_op, stop.semihost_param)
        return InternalErrorExit(KVM_INTERNAL_ERROR_EMULATION, stop.pc, stop.instruction, stop.reason)

    # --- traps (the VcpuTraps protocol the CPU backend calls) -----------------------------

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
        """A timer interrupt is asserted now."""
        return self.timer.irq_pending(self.vm.host.counter())

    def next_irq_ns(self) -> int | None:
        """When an armed timer next asserts, in host virtual time."""
        count = self.timer.next_fire_host_count()
        return None if count is None else self.vm.host.counter_to_ns(max(count, 0))

    def exit_requested(self) -> bool:
        """A trap wants to leave guest execution: a system event, CPU_OFF, or CPU_SUSPEND's wait."""
        return self._system_event is not None or self.powered_off or self._in_wfi

    def memslots(self) -> list[GuestRegion]:
        """The VM's memslots, for a backend that maps guest RAM into its engine."""
        return list(self.vm.memory.slots.values())


def reset_mpidr(vcpu_id: int) -> int:
    """MPIDR_EL1 of vCPU `vcpu_id`, as KVM's reset_mpidr (arch/arm64/kvm/sys_regs.c) sets it.

    16 vCPUs per Aff0 (the GICv3 ICC_SGIxR target list addresses 16 CPUs per cluster), then
    Aff1 and Aff2: Aff0 = id & 0xf, Aff1 = (id >> 4) & 0xff, Aff2 = (id >> 12) & 0xff; bit 31 RES1.
    """
    return (1 << 31) | (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16


_TIMER_REGS: dict[int, SysReg] = {
    KVM_REG_ARM_TIMER_CTL: sysregs.CNTV_CTL_EL0,
    KVM_REG_ARM_TIMER_CVAL: sysregs.CNTV_CVAL_EL0,
    KVM_REG_ARM_TIMER_CNT: sysregs.CNTVCT_EL0,
    KVM_REG_ARM_PTIMER_CTL: sysregs.CNTP_CTL_EL0,
    KVM_REG_ARM_PTIMER_CVAL: sysregs.CNTP_CVAL_EL0,
    KVM_REG_ARM_PTIMER_CNT: sysregs.CNTPCT_EL0,
    KVM_REG_ARM_CNTKCTL_EL1: sysregs.CNTKCTL_EL1,
}
_TIMER_BASES = frozenset(r & ~KVM_REG_SIZE_MASK for r in _TIMER_REGS)
_EL1_BASES = frozenset(r & ~KVM_REG_SIZE_MASK for r in EL1_SYSREG_IDS)
# KVM's reset values (sys_reg_descs): SCTLR_EL1 has its RES1 bits set, the others are 0.
