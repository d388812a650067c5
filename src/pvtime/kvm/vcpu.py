"""A vCPU fd: KVM's vCPU ioctls -- device attributes, ONE_REG, power state, and `run()`.

Each public method is one ioctl (or one field of the shared `struct kvm_run`), in the style of
rust-vmm's kvm-ioctls `VcpuFd`. What the hypervisor keeps for the vCPU, and the traps its CPU
backend calls while `run()` executes guest code, are `pvtime.kvm.traps.Traps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.widths import U32, U64
from pvtime.abi import sysregs
from pvtime.abi.errno import E2BIG, EINVAL, ENOENT, ENXIO
from pvtime.abi.sysregs import SysReg
from pvtime.abi.uapi import (
    KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_TIMER_CTRL, KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_STOPPED,
    KVM_REG_ARM_CORE, KVM_REG_ARM_COPROC_MASK, KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_TIMER_CNT,
    KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL, KVM_REG_ARM_PTIMER_CNT,
    KVM_REG_ARM_PTIMER_CTL, KVM_REG_ARM_PTIMER_CVAL, KVM_REG_SIZE_MASK, reg_size,
    KVM_REG_ARM_CNTKCTL_EL1, KVM_REG_ARM_MPIDR_EL1, KVM_REGS_U32, CORE_REG_IDS, EL1_SYSREG_IDS, KVM_REG_ARM64, REG_PSTATE, core_reg_size,
)
from pvtime.cpu.backend import CpuBackend, Stop, StopKind, in_kernel_access
from pvtime.host.task import Task
from pvtime.kvm import arch_timer, hypercalls, pvtime
from pvtime.kvm.errors import KvmError
from pvtime.kvm.traps import Traps, VcpuStats
from pvtime.kvm.uaccess import read_user
from pvtime.kvm.exits import (
    Exit, HaltExit, InternalErrorExit, IntrExit, MmioExit, SemihostingExit, SystemEventExit,
)

if TYPE_CHECKING:
    from pvtime.kvm.vm import VmState


class Vcpu:
    """One virtual CPU of a `Vm` (its fd); create it with `Vm.create_vcpu`::

        vcpu = vm.create_vcpu(0)
        vcpu.init()
        vcpu.set_one_reg(REG_PC, entry)
        with host.on_cpu(task):  # KVM_RUN runs on the calling host task
            exit = vcpu.run()
    """

    def __init__(self, vm: VmState, vcpu_id: int, cpu: CpuBackend) -> None:
        self._vm = vm
        self._id = vcpu_id
        self._traps = Traps(vm, vcpu_id, cpu)
        vm.vcpus.append(self._traps)
        # kvm_run.immediate_exit: run() finishes a completed MMIO access and returns at once
        # (-EINTR), entering nothing -- how a VMM quiesces a vCPU before saving its state.
        self.immediate_exit = False
        self._deadline_mark: tuple[int, int] | None = None  # (tid, timeslices) at a deadline exit

    def __repr__(self) -> str:
        return f"Vcpu({self._vm.name}/{self._id})"

    @property
    def id(self) -> int:
        """The id the vCPU was created with (KVM_CREATE_VCPU's argument)."""
        return self._id

    def coalesced_mmio_ring(self) -> bytearray:
        """The page a VMM maps at KVM_COALESCED_MMIO_PAGE_OFFSET of the vCPU fd: the VM's
        coalesced-MMIO ring (`pvtime.abi.records.COALESCED_RING_*`), shared by all its vCPUs. The
        VMM reads entries from `first` to `last` and then stores `last` into `first`."""
        return self._vm.coalesced_mmio.ring

    @property
    def stats(self) -> VcpuStats:
        """The vCPU's counters (as KVM_GET_STATS_FD reads them): runs, loads, hypercalls."""
        return self._traps.stats

    # --- device attributes (KVM_{SET,GET,HAS}_DEVICE_ATTR on the vCPU fd) -------------------

    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR; `value` is what attr.addr points to (an int, or its little-endian
        bytes): the u64 IPA of KVM_ARM_VCPU_PVTIME_CTRL, the int PPI of KVM_ARM_VCPU_TIMER_CTRL."""
        if group == KVM_ARM_VCPU_PVTIME_CTRL:
            pvtime.set_ipa(self._traps.steal, self._vm.pvtime_supported(), attr, value, self._vm.memory)
        elif group == KVM_ARM_VCPU_TIMER_CTRL:
            arch_timer.set_attr(self._vm, attr, value)
        else:
            raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR: the attribute's value."""
        if group == KVM_ARM_VCPU_PVTIME_CTRL:
            return pvtime.get_ipa(self._traps.steal, self._vm.pvtime_supported(), attr)
        if group == KVM_ARM_VCPU_TIMER_CTRL:
            return arch_timer.get_attr(self._vm, attr)
        raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR: returns if supported, raises ENXIO otherwise."""
        if group == KVM_ARM_VCPU_PVTIME_CTRL:
            pvtime.has_ipa(self._vm.pvtime_supported(), attr)
        elif group == KVM_ARM_VCPU_TIMER_CTRL:
            arch_timer.has_attr(attr)
        else:
            raise KvmError(ENXIO, f"vCPU attribute group {group}: unknown")

    # --- ONE_REG ---------------------------------------------------------------------------

    def set_one_reg(self, reg_id: int, value: object) -> None:
        """KVM_SET_ONE_REG: core registers, timer registers and the firmware bitmap."""
        size = self._reg_size(reg_id)
        val = read_user(value, size, f"register {reg_id:#x}")
        cpu = self._traps.cpu
        if reg_id == KVM_REG_ARM_STD_HYP_BMAP:
            hypercalls.set_std_hyp_bmap(self._vm, val)
        elif reg_id & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            if reg_id == REG_PSTATE and val & PSR_MODE_MASK not in _PSR_MODES:
                raise KvmError(EINVAL, f"PSTATE {val:#x}: mode {val & PSR_MODE_MASK:#x} is not EL0t, EL1t or EL1h")
            try:
                cpu.core_regs[reg_id] = val
            except KeyError:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: unknown") from None
            except ValueError as err:
                raise KvmError(EINVAL, f"core register {reg_id:#x}: {err}") from None
        elif reg_id in _TIMER_REGS:
            self._set_timer_reg(reg_id, val)
        elif reg_id == KVM_REG_ARM_MPIDR_EL1:
            # sys_regs.c: MPIDR_EL1 has no set_user of its own, so any value is stored; PSCI and
            # the vGIC then find the vCPU by it (kvm_mpidr_to_vcpu).
            self._traps.mpidr = val
        elif reg_id in EL1_SYSREG_IDS:
            try:
                cpu.sys_regs[reg_id] = val
            except ValueError as err:
                raise KvmError(EINVAL, f"{sysregs.name(EL1_SYSREG_IDS[reg_id])}: {err}") from None
        else:
            raise KvmError(ENOENT, f"register {reg_id:#x}: unknown")

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG."""
        self._reg_size(reg_id)
        if reg_id == KVM_REG_ARM_STD_HYP_BMAP:
            return self._vm.std_hyp_bmap
        if reg_id & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            try:
                return self._traps.cpu.core_regs.get(reg_id, 0)
            except KeyError:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: unknown") from None
        if reg_id in _TIMER_REGS:
            vm = self._vm
            value = self._traps.timer.get_user(_TIMER_REGS[reg_id], vm.host.counter(), vm.guest_counter_hz())
            assert value is not None  # every id in _TIMER_REGS is a timer register
            return value
        if reg_id == KVM_REG_ARM_MPIDR_EL1:
            return self._traps.mpidr
        if reg_id in EL1_SYSREG_IDS:
            return self._traps.cpu.sys_regs[reg_id]
        raise KvmError(ENOENT, f"register {reg_id:#x}: unknown")

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
        if base >> 32 != KVM_REG_ARM64 >> 32:  # kvm_arm_{get,set}_reg: nothing else in the upper half
            raise KvmError(EINVAL, f"register {reg_id:#x}: not a KVM_REG_ARM64 id")
        if base & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
            # Linux get/set_core_reg: past struct kvm_regs is ENOENT, a bad offset or size EINVAL.
            offset = reg_id & U32 & ~KVM_REG_ARM_CORE  # core_reg_offset_from_id
            if offset >= KVM_REGS_U32 or offset + size // 4 >= KVM_REGS_U32:
                raise KvmError(ENOENT, f"core register {reg_id:#x}: past the end of struct kvm_regs")
            want = core_reg_size(reg_id)
            if want is None:
                raise KvmError(EINVAL, f"core register {reg_id:#x}: no register at that offset")
            if size != want:
                raise KvmError(EINVAL, f"register {reg_id:#x}: size {size} bytes, the register has {want}")
            return size
        known = (base == KVM_REG_ARM_STD_HYP_BMAP & ~KVM_REG_SIZE_MASK
                 or base in _TIMER_BASES or base in _EL1_BASES
                 or base == KVM_REG_ARM_MPIDR_EL1 & ~KVM_REG_SIZE_MASK)
        if known and size != 8:
            raise KvmError(ENOENT, f"register {reg_id:#x}: size {size} bytes, the register has 8")
        return size

    def _set_timer_reg(self, reg_id: int, val: int) -> None:
        vm = self._vm
        if reg_id == KVM_REG_ARM_TIMER_CNT:
            # Writing CNTVCT sets the VM-wide CNTVOFF, as KVM does since 6.4.
            vm.counter.voffset = (vm.host.counter() - val) & U64
            vm.counter.v_anchor = (val, vm.host.counter())  # for an LPT rescale
        elif reg_id == KVM_REG_ARM_PTIMER_CNT:
            vm.counter.poffset = (vm.host.counter() - val) & U64
            vm.counter.p_anchor = (val, vm.host.counter())
        else:
            self._traps.timer.set_user(_TIMER_REGS[reg_id], val, vm.host.counter())

    # --- power state ---------------------------------------------------------------------

    def init(self, *, power_off: bool = False) -> None:
        """KVM_ARM_VCPU_INIT: reset the vCPU; KVM_ARM_VCPU_POWER_OFF starts it powered off.

        The stolen-time IPA survives, as in Linux.
        """
        traps = self._traps
        traps.powered_off = power_off
        traps.system_event = None
        traps.reset()

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: KVM_MP_STATE_STOPPED while powered off (KVM_ARM_VCPU_POWER_OFF,
        PSCI CPU_OFF, a system event, or the end of a model program), else KVM_MP_STATE_RUNNABLE
        (a vCPU waiting in WFI or PSCI CPU_SUSPEND is runnable, as on arm64 Linux)."""
        return KVM_MP_STATE_STOPPED if self._traps.powered_off else KVM_MP_STATE_RUNNABLE

    def set_mp_state(self, mp_state: int) -> None:
        """KVM_SET_MP_STATE: RUNNABLE powers the vCPU on where it stands (no reset, unlike PSCI
        CPU_ON), STOPPED powers it off; anything else is EINVAL (KVM_MP_STATE_SUSPENDED too: pvtime
        offers no PSCI SYSTEM_SUSPEND)."""
        if mp_state == KVM_MP_STATE_RUNNABLE:
            self._traps.powered_off = False
        elif mp_state == KVM_MP_STATE_STOPPED:
            self._traps.power_off()
        else:
            raise KvmError(EINVAL, f"{self}: MP state {mp_state} is not one an arm64 vCPU can take")

    # --- KVM_RUN -------------------------------------------------------------------------

    def complete_mmio(self, data: bytes) -> None:
        """Supply the data of the last MMIO read exit (kvm_run.mmio.data) before the next run().

        EINVAL when no MMIO read exit is waiting for its data (or, on the model backend, `data` is
        not the exit's `len`).
        """
        try:
            self._traps.cpu.complete_mmio(data)
        except ValueError as err:
            raise KvmError(EINVAL, f"{self}: {err}") from None

    def run(self) -> Exit:
        """KVM_RUN: load the vCPU on the calling task, enter the guest, return the next exit.

        Guest accesses to the in-kernel vGIC are handled here and never exit. The first run of
        each vCPU fails with EINVAL or ENXIO when the vGIC or the timer PPIs are misconfigured."""
        traps = self._traps
        traps.running = True
        try:
            return self._run()
        finally:
            traps.running = False

    def _run(self) -> Exit:
        vm = self._vm
        traps = self._traps
        if not traps.has_run_once:
            self._first_run_init()
        if not vm.has_run:
            vm.note_first_run()  # HAS_RAN_ONCE is set before immediate_exit is looked at
        traps.has_run_once = True
        if self.immediate_exit:  # -EINTR before guest entry: no task's run_delay is read
            traps.cpu.complete_pending()
            return IntrExit()
        slice_ = vm.host.current
        if slice_ is None:
            raise RuntimeError(f"{self}: run() must be called by a host task on a CPU (Host.on_cpu)")
        traps.stats.runs += 1
        task = slice_.task
        traps.blocked = None
        # A run that ended at the host's deadline is continued, not reloaded, while the thread has
        # not been switched out since (no sched_in, so no kvm_arch_vcpu_load in Linux either).
        if self._deadline_mark != (task.tid, task.timeslices):
            self._vcpu_load(task)
        self._deadline_mark = None
        while True:
            if traps.powered_off:
                traps.blocked = task  # the thread now waits in KVM_RUN until CPU_ON wakes it
                return HaltExit(None)
            if traps.in_wfi:
                if not traps.irq_pending():  # kvm_vcpu_check_block
                    traps.blocked = task  # an interrupt (the vGIC's kick) wakes it
                    return HaltExit(traps.next_irq_ns())
                traps.in_wfi = False
            stop = traps.cpu.execute(traps, slice_)
            if stop.kind is StopKind.DEADLINE:  # the common exit, as _exit_for makes it
                self._deadline_mark = (task.tid, task.timeslices)
                return _INTR
            if stop.kind is StopKind.MMIO and self._in_kernel_mmio(stop):
                continue
            if not (stop.kind is StopKind.EXIT and traps.in_wfi and traps.system_event is None):
                ex = self._exit_for(stop)
                if isinstance(ex, HaltExit):
                    traps.blocked = task  # the thread waits in KVM_RUN: CPU_ON or an interrupt wakes it
                return ex

    def _first_run_init(self) -> None:
        """kvm_vcpu_first_run_init: map the vGIC (kvm_vgic_map_resources), then connect this
        vCPU's timers to it (kvm_timer_enable)."""
        vm = self._vm
        if vm.vgic is not None:
            vm.vgic.map_resources()
        arch_timer.timer_enable(vm, self._traps)

    def _in_kernel_mmio(self, stop: Stop) -> bool:
        """io_mem_abort: an access an in-kernel device (kvm_io_bus) serves completes here, the
        data of a load going back to the vCPU; False when the VMM must handle it."""
        data = in_kernel_access(self._traps, stop)
        if data is None:
            return False
        if not stop.mmio_write:
            self._traps.cpu.complete_mmio(data)
        return True

    def _vcpu_load(self, task: Task) -> None:
        """kvm_arch_vcpu_load + KVM_REQ_RECORD_STEAL: update the record before guest entry."""
        traps = self._traps
        traps.stats.loads += 1
        pvtime.update_stolen_time(traps.steal, task, self._vm.memory, self._vm.quirks)

    def _exit_for(self, stop: Stop) -> Exit:
        traps = self._traps
        match stop.kind:  # (StopKind.DEADLINE: _run returns its exit itself)
            case StopKind.HALT:
                return HaltExit(traps.next_irq_ns())
            case StopKind.POWER_OFF:
                traps.powered_off = True
                return HaltExit(None)
            case StopKind.EXIT:
                event, traps.system_event = traps.system_event, None
                if event is not None:
                    return SystemEventExit(event)
                return HaltExit(None) if traps.powered_off else IntrExit()
            case StopKind.MMIO:
                return MmioExit(stop.mmio_addr, stop.mmio_len, stop.mmio_data, stop.mmio_write)
            case StopKind.SEMIHOSTING:
                return SemihostingExit(stop.semihost_op, stop.semihost_param)
        return InternalErrorExit(KVM_INTERNAL_ERROR_EMULATION, stop.pc, stop.instruction, stop.reason)


_INTR = IntrExit()  # an exit is immutable: one serves every end of a time slice

_TIMER_REGS: dict[int, SysReg] = {
    KVM_REG_ARM_TIMER_CTL: sysregs.CNTV_CTL_EL0,
    KVM_REG_ARM_TIMER_CVAL: sysregs.CNTV_CVAL_EL0,
    KVM_REG_ARM_TIMER_CNT: sysregs.CNTVCT_EL0,
    KVM_REG_ARM_PTIMER_CTL: sysregs.CNTP_CTL_EL0,
    KVM_REG_ARM_PTIMER_CVAL: sysregs.CNTP_CVAL_EL0,
    KVM_REG_ARM_PTIMER_CNT: sysregs.CNTPCT_EL0,
    KVM_REG_ARM_CNTKCTL_EL1: sysregs.CNTKCTL_EL1,
}
# set_core_reg: PSTATE.M (PSR_AA32_MODE_MASK) must name a mode the vCPU has; an AArch64-only vCPU
# (no AArch32 EL1 or EL0) has EL0t, EL1t and EL1h.
PSR_MODE_MASK = 0x1F
_PSR_MODES = frozenset({0b00000, 0b00100, 0b00101})
_TIMER_BASES = frozenset(r & ~KVM_REG_SIZE_MASK for r in _TIMER_REGS)
_EL1_BASES = frozenset(r & ~KVM_REG_SIZE_MASK for r in EL1_SYSREG_IDS)
