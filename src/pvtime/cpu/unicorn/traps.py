"""What the engine hands to the hypervisor while it runs: the hooks unicorn calls.

- HVC and SMC go to the SMCCC dispatch (`VcpuTraps.hypercall`), with x0..x3.
- MRS/MSR of the generic-timer registers and MPIDR_EL1 are served by the hypervisor; every other
  system register is the engine's own. A native filter (`native.SysregFilter`) hands the
  hypervisor only those, so the guest's other MRS/MSR cost no Python call. The timer's CTL and
  CVAL must stay trapped for writes too: the engine does not keep them. Each trapped access costs
  the guest `SYSREG_ACCESS_INSNS` instruction times. An EL0 read of CNTVCT_EL0, CNTPCT_EL0 or
  CNTFRQ_EL0 that CNTKCTL_EL1 (as the hypervisor holds it) does not enable -- EL0VCTEN, EL0PCTEN,
  either for CNTFRQ -- is left to the engine, whose own CNTKCTL_EL1 stays 0: it raises the
  architectural trap to EL1 (ESR_EL1.EC = 0x18 with the MRS's ISS), delivered as below.
- TLBI and IC instructions are executed by the engine and counted (another native filter): the
  run loop then makes the other vCPUs' engines drop their translations (`memory`).
- `HLT #0xF000` (Arm semihosting) stops with `StopKind.SEMIHOSTING`, for the VMM to serve.
- An access the engine refuses is recorded by the fault hook (`fault_hook`) and, once the engine
  has stopped, served as an MMIO exit, a dirty-log fault or a fault (`memory`).
- An exception the guest takes itself -- SVC, BRK, an undefined instruction, an instruction or
  data abort from its MMU, a trapped system-register access -- is delivered to EL1 with the
  syndrome and fault address QEMU computed (`syndrome`, `exceptions`), once the engine has
  stopped (`exception`). One the guest cannot take stops the vCPU with `StopKind.FAULT`, naming
  the PC and the disassembled instruction.

A hook records why the engine must stop in `stop` (or `exception`, or `memory.wp_fault`) and
stops it; the run loop acts on it once `emu_start` has returned.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from unicorn import Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi import sysregs
from pvtime.abi.sysregs import SysReg
from pvtime.abi.widths import U32, U64
from pvtime.cpu.backend import Conduit, GuestFault, Stop, StopKind, VcpuTraps
from pvtime.cpu.fastpath import FastPathTraps
from pvtime.cpu.unicorn.exceptions import EC_FP_ACCESS, esr_ec
from pvtime.cpu.unicorn.fast_traps import FastTraps
from pvtime.cpu.unicorn.memory import GuestMemory
from pvtime.cpu.unicorn.native import CpReg, SysregFilter
from pvtime.cpu.unicorn.registers import X_REGS, Registers
from pvtime.cpu.unicorn.syndrome import ExceptionRecords

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
# The exceptions the guest takes itself, by what they are called in a diagnostic.
_GUEST_EXCEPTIONS = {
    _EXCP_UDEF: "undefined instruction", _EXCP_SWI: "SVC", _EXCP_PREFETCH_ABORT: "instruction abort",
    _EXCP_DATA_ABORT: "data abort", _EXCP_BKPT: "BRK",
}
_ABORTS = (_EXCP_PREFETCH_ABORT, _EXCP_DATA_ABORT)  # these set FAR_EL1

# System registers the hypervisor serves; the engine keeps all others (SCTLR, VBAR, ELR...).
_TRAPPED: dict[tuple[int, int, int, int, int], SysReg] = {tuple(r): r for r in (  # type: ignore[misc]
    sysregs.CNTFRQ_EL0, sysregs.CNTPCT_EL0, sysregs.CNTVCT_EL0, sysregs.CNTP_TVAL_EL0,
    sysregs.CNTP_CTL_EL0, sysregs.CNTP_CVAL_EL0, sysregs.CNTV_TVAL_EL0, sysregs.CNTV_CTL_EL0,
    sysregs.CNTV_CVAL_EL0, sysregs.CNTKCTL_EL1, sysregs.MPIDR_EL1,
)}
_REG_IDS = frozenset(X_REGS)

# Cache and TLB maintenance the other vCPUs must hear of (SYS instructions, op0 = 1): every TLBI
# (CRn = 8), and IC IALLUIS, IC IALLU, IC IVAU. Over-invalidating a cache is always allowed.
TLBI_INSNS = tuple((1, op1, 8, crm, op2) for op1 in range(8) for crm in range(16) for op2 in range(8))
IC_INSNS = ((1, 0, 7, 1, 0), (1, 0, 7, 5, 0), (1, 3, 7, 5, 1))


@dataclass(frozen=True)
class SyncException:
    """A synchronous exception for the guest to take, once the engine has stopped."""

    esr: int
    far: int | None  # for aborts
    cause: str  # what it is, for a diagnostic
    at: int  # the instruction that raised it


class TrapHooks:
    """The hooks of one engine, serving its traps through `traps` (the hypervisor, while it runs)."""

    def __init__(self, uc: Uc, regs: Registers, memory: GuestMemory, budget: Budget, *,
                 native: bool | None = None) -> None:
        self._uc = uc
        self._regs = regs
        self._memory = memory
        self._budget = budget
        self.traps: VcpuTraps | None = None
        self.stop: Stop | None = None  # why the engine stopped, for the run loop
        self.exception: SyncException | None = None  # for the guest to take, by the run loop
        self.error: BaseException | None = None  # raised by a hook, re-raised by the run loop
        self._value = ctypes.c_uint64()
        self._records = ExceptionRecords(uc)
        # Counter reads and simple hypercalls are served by the fast traps; they hand the rest to
        # the Python hooks below, ctypes callbacks (3x cheaper per trap than the binding's generic
        # wrapper) that write registers through the C API.
        self.fast = FastTraps(uc, regs, budget.counter, SYSREG_ACCESS_INSNS, self._on_mrs, self._on_intr, native=native)
        budget.fast = self.fast
        self._fast_paths: FastPathTraps | None = None
        # The native filters call the MRS/MSR hooks for the trapped registers only.
        self._sysreg_filters = [SysregFilter(uc, A.UC_ARM64_INS_MRS, [_TRAPPED], self.fast.mrs_next, native=native),
                                SysregFilter(uc, A.UC_ARM64_INS_MSR, [_TRAPPED], self._on_msr, native=native)]
        self._maintenance = SysregFilter(uc, A.UC_ARM64_INS_SYS, [TLBI_INSNS, IC_INSNS], native=native)
        self._published = (0, 0)  # TLBI and IC counts already told to the other vCPUs
        self._begun: VcpuTraps | None = None  # the traps of the last begin(), and their fast paths
        self._begun_fast: FastPathTraps | None = None
        self.native = self._maintenance.native and self.fast.native

    def begin(self, traps: VcpuTraps) -> None:
        """An execute() on `traps` starts: publish how the counters read. Hypercall answers are
        published after the first call the Python hook serves (most executes make none)."""
        if traps is not self._begun:  # the same traps object every execute, bar tests
            fast = getattr(traps, "counter_params", None) and getattr(traps, "note_hypercalls", None)
            self._begun_fast = cast("FastPathTraps", traps) if fast else None
            self._begun = traps
        self.traps = traps
        self._fast_paths = self._begun_fast
        self._publish_traps(answers=False)

    def end(self) -> None:
        """The execute() ends: the fast traps stop, and the hypervisor counts their calls."""
        calls = self.fast.stop()
        if calls and self._fast_paths is not None:
            self._fast_paths.note_hypercalls(calls)
        self.traps = self._fast_paths = None

    def _publish_traps(self, *, answers: bool) -> None:
        fast_paths = self._fast_paths
        self.fast.publish_counter(fast_paths.counter_params() if fast_paths is not None else None)
        if answers:
            self.fast.publish_answers(fast_paths.constant_hypercalls() if fast_paths is not None else ())

    def publish_maintenance(self) -> None:
        """Tell the other vCPUs' engines of the TLBI and IC instructions this one ran since the
        last call: they drop their translations or translated code before they run next."""
        hits = (self._maintenance.hits(1), self._maintenance.hits(2))
        if hits != self._published:
            tlb, code = (now != before for now, before in zip(hits, self._published, strict=True))
            self._memory.invalidate_others(tlb=tlb, code=code)
            self._published = hits

    def _on_intr(self, handle: int, intno: int) -> None:
        try:
            self._on_interrupt(self._uc, intno)
        except BaseException as err:  # noqa: BLE001 - re-raised after emu_start returns
            self._hook_failed(err)

    def _on_interrupt(self, uc: Uc, intno: int) -> None:
        if intno in (_EXCP_HVC, _EXCP_SMC):
            self._hypercall(uc, Conduit.HVC if intno == _EXCP_HVC else Conduit.SMC)
            return
        pc = self._regs.pc()
        if intno == _EXCP_UDEF and self._memory.fetch(pc) == HLT_SEMIHOSTING:
            self.stop = Stop(StopKind.SEMIHOSTING, pc=pc, semihost_op=uc.reg_read(A.UC_ARM64_REG_X0) & U32,
                             semihost_param=uc.reg_read(A.UC_ARM64_REG_X1) & U64)
            uc.emu_stop()
            return
        cause = _GUEST_EXCEPTIONS.get(intno)
        record = self._records.read() if cause is not None else None
        at = pc - 4 if intno == _EXCP_SWI else pc  # the PC is already past an SVC
        if cause is None:
            self.stop = self._memory.fault_stop(pc, f"exception {intno} the guest cannot take")
        elif record is None:
            self.stop = self._memory.fault_stop(at, f"{cause}: this unicorn does not expose the exception's "
                                                    f"syndrome (pvtime.cpu.unicorn.syndrome), so the guest "
                                                    f"cannot take it")
        elif record.target_el != 1:
            self.stop = self._memory.fault_stop(at, f"{cause} to EL{record.target_el} (ESR {record.esr:#x}), "
                                                    f"which the guest cannot take")
        else:
            esr = record.esr
            if esr_ec(esr) == EC_FP_ACCESS:
                esr &= ~0xF_FFFF
            self.exception = SyncException(esr, record.far if intno in _ABORTS else None, cause, at)
        uc.emu_stop()

    def _hypercall(self, uc: Uc, conduit: Conduit) -> None:
        traps, regs = self.traps, self._regs
        assert traps is not None
        self._budget.account()
        imm = 0
        if conduit is Conduit.SMC:  # KVM ignores the HVC immediate; an SMC's matters
            imm = ((self._memory.fetch(regs.pc() - 4) or 0) >> 5) & 0xFFFF
        args = regs.read_args()
        try:
            traps.hypercall(args, conduit, imm)
        except GuestFault as fault:
            pc = regs.pc() - 4  # the PC is past the HVC/SMC, as on exception return
            self.stop = self._memory.fault_stop(pc, fault.reason)
            uc.emu_stop()
            return
        regs.write_args(args)
        self._budget.publish()
        self._publish_traps(answers=True)
        if traps.exit_requested():
            self.stop = Stop(StopKind.EXIT)
            uc.emu_stop()
        elif self._budget.expired():
            # The call woke another vCPU (PSCI CPU_ON): the host ends this segment here.
            self.stop = Stop(StopKind.DEADLINE)
            uc.emu_stop()
        # No timer is an SMCCC/PSCI call's business: otherwise the budget stands.

    def _el0_counter_trapped(self, sysreg: SysReg) -> bool:
        """An MRS of `sysreg` now is an EL0 counter read that CNTKCTL_EL1 does not enable."""
        enable = sysregs.EL0_COUNTER_ENABLE.get(sysreg)
        if enable is None or self._regs.pstate() & 0xC:  # not a counter register, or not at EL0
            return False
        assert self.traps is not None
        return not self.traps.read_sysreg(sysregs.CNTKCTL_EL1) & enable

    def _on_mrs(self, handle: int, reg: int, cp: ctypes._Pointer[CpReg], user: int | None) -> int:
        c = cp.contents
        sysreg = _TRAPPED[(c.op0, c.op1, c.crn, c.crm, c.op2)]
        try:
            if self._el0_counter_trapped(sysreg):
                return 0  # the engine's own check (its CNTKCTL_EL1 is 0) traps it to EL1
            self._budget.charge(SYSREG_ACCESS_INSNS)
            self._budget.account()  # the counter must include the instructions executed so far
            assert self.traps is not None
            self._value.value = self.traps.read_sysreg(sysreg) & U64
            if reg in _REG_IDS:
                uclib.uc_reg_write(handle, reg, ctypes.byref(self._value))
            self._budget.publish()
        except GuestFault as fault:
            self._sysreg_fault(fault)
        except BaseException as err:  # noqa: BLE001 - re-raised after emu_start returns
            self._hook_failed(err)
        return 1

    def _on_msr(self, handle: int, reg: int, cp: ctypes._Pointer[CpReg], user: int | None) -> int:
        c = cp.contents
        sysreg = _TRAPPED[(c.op0, c.op1, c.crn, c.crm, c.op2)]
        try:
            self._budget.charge(SYSREG_ACCESS_INSNS)
            self._budget.account()
            traps = self.traps
            assert traps is not None
            traps.write_sysreg(sysreg, c.val & U64)
            self._budget.arm(traps, traps.irq_pending())  # the timer may fire earlier (or now)
            self._publish_traps(answers=False)  # CNTKCTL_EL1 may have changed
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
