"""What the engine hands to the hypervisor while it runs: the hooks unicorn calls.

- HVC and SMC go to the SMCCC dispatch (`VcpuTraps.hypercall`), with x0..x3.
- MRS/MSR of the generic-timer registers and MPIDR_EL1 are served by the hypervisor
  (`UC_HOOK_INSN`); every other system register is the engine's own. Each trapped access costs the
  guest `SYSREG_ACCESS_INSNS` instruction times. An EL0 read of CNTVCT_EL0, CNTPCT_EL0 or
  CNTFRQ_EL0 that CNTKCTL_EL1 (as the hypervisor holds it) does not enable -- EL0VCTEN, EL0PCTEN,
  either for CNTFRQ -- traps to EL1 as the architecture says: a synchronous exception with
  ESR_EL1.EC = 0x18 and the MRS's ISS, ELR_EL1 = the MRS (`exceptions`), taken once the engine
  has stopped (`el0_trap`).
- `HLT #0xF000` (Arm semihosting) stops with `StopKind.SEMIHOSTING`, for the VMM to serve.
- An access the engine refuses is an MMIO exit, a dirty-log fault or a fault (`memory`).
- An undefined instruction or an exception the guest would have to take itself (SVC, BRK, aborts)
  stops the vCPU with `StopKind.FAULT`, naming the PC and the disassembled instruction.

A hook records why the engine must stop in `stop` (or `el0_trap`, or `memory.wp_fault`) and
stops it; the run loop acts on it once `emu_start` has returned.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn import (
    UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_UNMAPPED, UC_HOOK_MEM_READ_UNMAPPED, UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED, Uc, UcError,
)
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi import sysregs
from pvtime.abi.sysregs import SysReg
from pvtime.abi.widths import U32, U64
from pvtime.cpu.backend import Conduit, GuestFault, Stop, StopKind, VcpuTraps
from pvtime.cpu.unicorn.exceptions import sysreg_encoding, sysreg_trap_syndrome
from pvtime.cpu.unicorn.memory import GuestMemory
from pvtime.cpu.unicorn.registers import X_REGS, Registers

if TYPE_CHECKING:
    from pvtime.cpu.unicorn.run import Budget

# What a trapped system-register access (a counter read, a timer write) costs the guest, in
# instruction times: on a real core the `isb; mrs cntvct_el0` pair of a counter read takes tens
# of cycles. Charging it also bounds how many traps a polling loop makes per virtual second.
SYSREG_ACCESS_INSNS = 20

HLT_SEMIHOSTING = 0xD45E_0000

# unicorn's exception numbers (QEMU EXCP_*), as UC_HOOK_INTR reports them.
_EXCP_UDEF, _EXCP_SWI, _EXCP_PREFETCH_ABORT, _EXCP_DATA_ABORT, _EXCP_BKPT = 1, 2, 3, 4, 7
_EXCP_HVC, _EXCP_SMC = 11, 13
_EXCP_NAMES = {
    _EXCP_UDEF: "undefined instruction", _EXCP_SWI: "SVC (a synchronous exception the guest must take)",
    _EXCP_PREFETCH_ABORT: "prefetch abort", _EXCP_DATA_ABORT: "data abort (alignment or permission)",
    _EXCP_BKPT: "BRK breakpoint (a synchronous exception the guest must take)",
}

# System registers the hypervisor serves; the engine keeps all others (SCTLR, VBAR, ELR...).
_TRAPPED: dict[tuple[int, int, int, int, int], SysReg] = {tuple(r): r for r in (  # type: ignore[misc]
    sysregs.CNTFRQ_EL0, sysregs.CNTPCT_EL0, sysregs.CNTVCT_EL0, sysregs.CNTP_TVAL_EL0,
    sysregs.CNTP_CTL_EL0, sysregs.CNTP_CVAL_EL0, sysregs.CNTV_TVAL_EL0, sysregs.CNTV_CTL_EL0,
    sysregs.CNTV_CVAL_EL0, sysregs.CNTKCTL_EL1, sysregs.MPIDR_EL1,
)}
_REG_IDS = frozenset(X_REGS)


class _CpReg(ctypes.Structure):
    """uc_arm64_cp_reg, as the MRS/MSR hook receives it."""

    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


_SYS_CFUNC = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(_CpReg),
                              ctypes.c_void_p)


class TrapHooks:
    """The hooks of one engine, serving its traps through `traps` (the hypervisor, while it runs)."""

    def __init__(self, uc: Uc, regs: Registers, memory: GuestMemory, budget: Budget) -> None:
        self._uc = uc
        self._regs = regs
        self._memory = memory
        self._budget = budget
        self.traps: VcpuTraps | None = None
        self.stop: Stop | None = None  # why the engine stopped, for the run loop
        self.el0_trap: int | None = None  # ESR of an EL0 counter read to deliver to EL1
        self.error: BaseException | None = None  # raised by a hook, re-raised by the run loop
        self._value = ctypes.c_uint64()
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                    | UC_HOOK_MEM_WRITE_PROT, self._on_memory)
        # The counter is read in guests' polling loops: the MRS/MSR hook bypasses the binding's
        # generic wrapper (3x cheaper per trap) and writes registers through the C API.
        self._sys_cbs = [_SYS_CFUNC(self._on_mrs), _SYS_CFUNC(self._on_msr)]
        for cb, insn in zip(self._sys_cbs, (A.UC_ARM64_INS_MRS, A.UC_ARM64_INS_MSR), strict=True):
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, cb, None,  # noqa: SLF001
                                    ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise UcError(err)

    def _on_interrupt(self, uc: Uc, intno: int, user: object) -> None:
        if intno in (_EXCP_HVC, _EXCP_SMC):
            self._hypercall(uc, Conduit.HVC if intno == _EXCP_HVC else Conduit.SMC)
            return
        pc = uc.reg_read(A.UC_ARM64_REG_PC)
        if intno == _EXCP_SWI:
            pc -= 4  # the PC is already past an SVC
        word = self._memory.read_word(pc)
        if intno == _EXCP_UDEF and word is not None and word & 0xFFF0_0000 == 0xD530_0000:  # MRS
            sysreg = _TRAPPED.get(sysreg_encoding(word))
            if sysreg is not None and self._el0_counter_trapped(sysreg):
                # The engine's own access check refused it (its CNTKCTL_EL1 stays 0: the hypervisor
                # serves that register): take the architectural trap to EL1 (after emu_start).
                self.el0_trap = sysreg_trap_syndrome(word)
                uc.emu_stop()
                return
        if intno == _EXCP_UDEF and word == HLT_SEMIHOSTING:
            self.stop = Stop(StopKind.SEMIHOSTING, pc=pc, semihost_op=uc.reg_read(A.UC_ARM64_REG_X0) & U32,
                             semihost_param=uc.reg_read(A.UC_ARM64_REG_X1) & U64)
        else:
            reason = _EXCP_NAMES.get(intno, f"exception {intno} the guest cannot take")
            self.stop = self._memory.fault_stop(pc, reason, word)
        uc.emu_stop()

    def _hypercall(self, uc: Uc, conduit: Conduit) -> None:
        traps, regs = self.traps, self._regs
        assert traps is not None
        self._budget.account()
        imm = 0
        if conduit is Conduit.SMC:  # KVM ignores the HVC immediate; an SMC's matters
            imm = ((self._memory.read_word(regs.pc() - 4) or 0) >> 5) & 0xFFFF
        args = regs.read_args()
        try:
            traps.hypercall(args, conduit, imm)
        except GuestFault as fault:
            pc = regs.pc() - 4  # the PC is past the HVC/SMC, as on exception return
            self.stop = self._memory.fault_stop(pc, fault.reason)
            uc.emu_stop()
            return
        regs.write_args(args)
        if traps.exit_requested():
            self.stop = Stop(StopKind.EXIT)
            uc.emu_stop()
        elif self._budget.expired():
            # The call woke another vCPU (PSCI CPU_ON): the host ends this segment here.
            self.stop = Stop(StopKind.DEADLINE)
            uc.emu_stop()
        # No timer is an SMCCC/PSCI call's business: otherwise the budget stands.

    def _on_memory(self, uc: Uc, access: int, address: int, size: int, value: int, user: object) -> bool:
        stop = self._memory.access_fault(access, address, size, value, self._regs.pc())
        if stop is None:  # a store to a logging slot: served by the run loop, then retried
            uc.emu_stop()
        else:
            self.stop = stop
        return False

    def _el0_counter_trapped(self, sysreg: SysReg) -> bool:
        """An MRS of `sysreg` now is an EL0 counter read that CNTKCTL_EL1 does not enable."""
        enable = sysregs.EL0_COUNTER_ENABLE.get(sysreg)
        if enable is None or self._regs.pstate() & 0xC:  # not a counter register, or not at EL0
            return False
        assert self.traps is not None
        return not self.traps.read_sysreg(sysregs.CNTKCTL_EL1) & enable

    def _on_mrs(self, handle: int, reg: int, cp: ctypes._Pointer, user: int) -> int:  # type: ignore[type-arg, unused-ignore]
        c = cp.contents
        sysreg = _TRAPPED.get((c.op0, c.op1, c.crn, c.crm, c.op2))
        if sysreg is None:
            return 0  # the engine's own register
        try:
            if self._el0_counter_trapped(sysreg):
                return 0  # the engine raises UNDEF at the MRS: _on_interrupt turns it into the trap
            self._budget.charge(SYSREG_ACCESS_INSNS)
            self._budget.account()  # the counter must include the instructions executed so far
            assert self.traps is not None
            self._value.value = self.traps.read_sysreg(sysreg) & U64
            if reg in _REG_IDS:
                uclib.uc_reg_write(handle, reg, ctypes.byref(self._value))
        except GuestFault as fault:
            self._sysreg_fault(fault)
        except BaseException as err:  # noqa: BLE001 - re-raised after emu_start returns
            self._hook_failed(err)
        return 1

    def _on_msr(self, handle: int, reg: int, cp: ctypes._Pointer, user: int) -> int:  # type: ignore[type-arg, unused-ignore]
        c = cp.contents
        sysreg = _TRAPPED.get((c.op0, c.op1, c.crn, c.crm, c.op2))
        if sysreg is None:
            return 0
        try:
            self._budget.charge(SYSREG_ACCESS_INSNS)
            self._budget.account()
            traps = self.traps
            assert traps is not None
            traps.write_sysreg(sysreg, c.val & U64)
            self._budget.arm(traps, traps.irq_pending())  # the timer may fire earlier (or now)
        except GuestFault as fault:
            self._sysreg_fault(fault)
        except BaseException as err:  # noqa: BLE001
            self._hook_failed(err)
        return 1

    def _sysreg_fault(self, fault: GuestFault) -> None:
        self.stop = self._memory.fault_stop(self._uc.reg_read(A.UC_ARM64_REG_PC), fault.reason)
        self._budget.counter.arm(0)  # stop at the next block: an MSR/MRS does not end its block

    def _hook_failed(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
        self._uc.emu_stop()
