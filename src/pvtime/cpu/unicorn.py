"""The unicorn CPU backend: one vCPU executing AArch64 machine code in unicorn (the QEMU engine).

What the hypervisor sees is what KVM/arm64 gives a VMM:

- Memory: every memslot buffer is mapped into the vCPU's engine with `mem_map_ptr`, so RAM is
  shared by all vCPUs of a VM and by the VMM, byte for byte. Read-only slots are mapped read-only;
  a guest write to one is an MMIO write exit, as in KVM. Any other data access is an MMIO exit
  when it has a valid syndrome (`mmio_decode`), and an internal error otherwise. During an MMIO
  exit the PC still points at the access; the next `execute()` writes a read's data (given with
  `complete_mmio`) to the destination register and moves the PC past it (kvm_handle_mmio_return).
  Dirty logging (KVM_MEM_LOG_DIRTY_PAGES) is KVM's stage-2 write protection: a logging slot is
  mapped read-only in the engine; the first store to a page stops the engine at the store, the
  page is marked dirty and made writable, and the store is retried. Reading the log
  (KVM_GET_DIRTY_LOG) changes the slot's `log_generation`, and the next execute() protects it again.
- Traps: HVC and SMC go to the SMCCC dispatch; MRS/MSR of the generic-timer registers and
  MPIDR_EL1 are served by the hypervisor (`UC_HOOK_INSN`); every other system register is the
  engine's own. `HLT #0xF000` (Arm semihosting) stops with `StopKind.SEMIHOSTING`, the PC past it,
  for the VMM to serve. An EL0 read of CNTVCT_EL0, CNTPCT_EL0 or CNTFRQ_EL0 that CNTKCTL_EL1
  (as the hypervisor holds it) does not enable -- EL0VCTEN, EL0PCTEN, either for CNTFRQ -- traps
  to EL1 as the architecture says: a synchronous exception with ESR_EL1.EC = 0x18 and the MRS's
  ISS, ELR_EL1 = the MRS, PC = VBAR_EL1 + 0x400 (the guest kernel emulates it, e.g. for LPT).
- Interrupts: there is no GIC. The only interrupt is the timers' level line (ENABLE && !IMASK &&
  count >= CVAL, from the hypervisor's `irq_pending`). When it is asserted and PSTATE.I is clear,
  the backend performs the architectural IRQ exception entry to EL1h: ELR_EL1 = the preferred
  return address, SPSR_EL1 = PSTATE, PSTATE.DAIF all set, SP switched to SP_EL1, PC = VBAR_EL1 +
  0x080 (from EL1t), 0x280 (from EL1h) or 0x480 (from EL0). The guest acknowledges the interrupt
  by reprogramming its timer (CVAL/TVAL forward, or CTL.IMASK/ENABLE), which drops the line.
  While the line is asserted but masked, the engine runs one translation block at a time: QEMU
  ends a block after every write to DAIF (`msr daifclr`, `msr daif`), so the interrupt is taken
  right after the instruction that unmasks it, as the architecture requires. A guest that keeps
  IRQs masked with the line asserted for more than `POLL_BLOCKS` blocks is then polled every
  `POLL_INSNS` instructions instead (an unmask inside such a burst is seen at its end).
- WFI: the engine returns at a WFI; with no interrupt asserted (masked or not) the vCPU halts
  until its next timer event (`StopKind.HALT`). WFE is executed by unicorn as a no-op, which the
  architecture allows (a WFE may complete at any time).
- Faults: an instruction fetch outside RAM, an undefined instruction, an MMIO access without a
  valid syndrome, or an exception the guest would have to take itself (SVC, BRK, aborts) stop
  this vCPU with `StopKind.FAULT` naming the PC, the disassembled instruction and the reason. The
  vCPU stays stopped; nothing else is affected.
- Time: guest instructions advance virtual time at `instructions_per_sec`. Instructions are
  counted per translation block by `BlockCounter`; each run of the engine is bounded by the slice
  deadline and the next timer event, so interrupts arrive on time and the same run gives the same
  result.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from unicorn import (
    UC_ARCH_ARM64, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_UNMAPPED, UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT, UC_HOOK_MEM_WRITE_UNMAPPED, UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED, UC_MODE_ARM, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError,
)
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi import sysregs
from pvtime.abi.sysregs import SysReg
from pvtime.abi.widths import U64
from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.abi.uapi import (
    CORE_REG_IDS, EL1_SYSREG_IDS, PAGE_SIZE, REG_ELR_EL1, REG_FPCR, REG_FPSR, REG_PC, REG_PSTATE, REG_SP, REG_SP_EL1,
    REG_SPSR_EL1, reg_v, reg_x,
)
from pvtime.cpu.backend import Clock, Conduit, GuestFault, GuestRegion, Stop, StopKind, VcpuTraps
from pvtime.cpu.block_counter import BlockCounter
from pvtime.cpu.disasm import disassemble
from pvtime.cpu.mmio_decode import MmioAccess, decode

_reg_read_batch = uclib.uc_reg_read_batch
_reg_write_batch = uclib.uc_reg_write_batch

DEFAULT_INSTRUCTIONS_PER_SEC = 1_000_000_000  # 1 instruction per virtual ns

# What a trapped system-register access (a counter read, a timer write) costs the guest, in
# instruction times: on a real core the `isb; mrs cntvct_el0` pair of a counter read takes tens
# of cycles. Charging it also bounds how many traps a polling loop makes per virtual second.
SYSREG_ACCESS_INSNS = 20

# While the interrupt line is asserted but masked: run one block at a time for POLL_BLOCKS runs,
# then check PSTATE.I every POLL_INSNS instructions (see the module docstring).
POLL_INSNS = 4096
POLL_BLOCKS = 256

# PSTATE: N Z C V | D A I F (bits 9..6) | M[3:0] (EL in 3:2, SPSel in 0).
PSTATE_I = 1 << 7
PSTATE_DAIF = 0xF << 6
PSTATE_NZCV = 0xF << 28
PSTATE_EL1H = 0b0101
PSTATE_RESET = PSTATE_DAIF | PSTATE_EL1H  # KVM's vCPU reset: EL1h, DAIF masked
_VALID_MODES = (0b0000, 0b0100, 0b0101)  # EL0t, EL1t, EL1h (KVM refuses the others)

_EC_SYSREG = 0x18  # ESR_ELx.EC of a trapped MSR/MRS/system instruction
_ESR_IL = 1 << 25

WFI = 0xD503_207F
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

_X_REGS = [getattr(A, f"UC_ARM64_REG_X{i}") for i in range(31)]
_V_REGS = {reg_v(i): getattr(A, f"UC_ARM64_REG_Q{i}") for i in range(32)}
U128 = (1 << 128) - 1
_NEVER = 0xFFFF_FFFF_FFFF_FFFC  # `until` address for emu_start: never reached

# SCR_EL3 (op0=3, op1=6, CRn=1, CRm=1, op2=0): NS | HCE | RW, so that HVC is enabled and EL1 is
# AArch64 (unicorn starts with SCR_EL3 = 0, where HVC is UNDEFINED).
_SCR_EL3 = (1, 1, 3, 6, 0)
_SCR_NS_HCE_RW = (1 << 0) | (1 << 8) | (1 << 10)
_SPSR_EL1 = (4, 0, 3, 0, 0)  # (CRn, CRm, op0, op1, op2): unicorn has no plain id for it


@dataclass
class _PendingMmio:
    """An MMIO exit the VMM has not finished: applied at the next execute()."""

    access: MmioAccess
    data: bytes | None = None


class CoreRegs(MutableMapping[int, int]):
    """The vCPU's KVM_REG_ARM_CORE registers, read and written in the engine.

    A mapping over `CORE_REG_IDS`; `clear()` is the vCPU reset. An unknown core id raises
    KeyError; an invalid PSTATE mode raises ValueError (KVM answers ENOENT and EINVAL).
    """

    def __init__(self, cpu: UnicornCpu) -> None:
        self._cpu = cpu

    def __setitem__(self, reg_id: int, value: int) -> None:
        self._cpu.write_core(reg_id, value)

    def __getitem__(self, reg_id: int) -> int:
        return self._cpu.read_core(reg_id)

    def get(self, reg_id: int, default: int | None = 0) -> int:  # type: ignore[override]
        """Like dict.get, but every core register exists (unknown ids still raise KeyError)."""
        return self._cpu.read_core(reg_id)

    def clear(self) -> None:
        """Reset the vCPU (KVM_ARM_VCPU_INIT / PSCI CPU_ON)."""
        self._cpu.reset()

    def __delitem__(self, reg_id: int) -> None:
        raise TypeError("a vCPU's registers cannot be deleted")

    def __iter__(self) -> Iterator[int]:
        return iter(CORE_REG_IDS)

    def __len__(self) -> int:
        return len(CORE_REG_IDS)


class SysRegs(MutableMapping[int, int]):
    """The vCPU's EL1 system registers (`EL1_SYSREG_IDS`) by KVM id, read and written in the engine.

    A mapping for `Vcpu`'s ONE_REG: an id outside the set raises KeyError (ENOENT); a value the
    engine does not keep as written (AMAIR_EL1, AFSR0/1_EL1 are RAZ/WI on this CPU) ValueError
    (EINVAL), as KVM refuses a value an invariant register cannot take.
    """

    def __init__(self, cpu: UnicornCpu) -> None:
        self._uc = cpu._uc

    def __contains__(self, reg_id: object) -> bool:
        return reg_id in EL1_SYSREG_IDS

    def __iter__(self) -> Iterator[int]:
        return iter(EL1_SYSREG_IDS)

    def __len__(self) -> int:
        return len(EL1_SYSREG_IDS)

    def __delitem__(self, reg_id: int) -> None:
        raise TypeError("a vCPU's registers cannot be deleted")

    def __getitem__(self, reg_id: int) -> int:
        r = EL1_SYSREG_IDS[reg_id]
        return self._uc.reg_read(A.UC_ARM64_REG_CP_REG, (r.crn, r.crm, r.op0, r.op1, r.op2)) & U64

    def __setitem__(self, reg_id: int, value: int) -> None:
        r = EL1_SYSREG_IDS[reg_id]
        self._uc.reg_write(A.UC_ARM64_REG_CP_REG, (r.crn, r.crm, r.op0, r.op1, r.op2, value & U64))
        now = self[reg_id]
        if now != value & U64:
            raise ValueError(f"{value:#x} written, the register reads {now:#x} (fixed or RAZ/WI bits)")


class UnicornCpu:
    """Executes one vCPU's AArch64 code in its own unicorn engine, resumable across slices."""

    def __init__(self, index: int, *, instructions_per_sec: int = DEFAULT_INSTRUCTIONS_PER_SEC,
                 native_counter: bool | None = None) -> None:
        if instructions_per_sec <= 0:
            raise ValueError(f"instructions_per_sec must be positive, got {instructions_per_sec}")
        self.index = index
        self.instructions_per_sec = instructions_per_sec
        # Instruction times used so far: instructions counted per translation block (BlockCounter)
        # plus SYSREG_ACCESS_INSNS per trapped system-register access.
        self.instructions = 0
        self.core_regs = CoreRegs(self)
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A72)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SCR_EL3, _SCR_NS_HCE_RW))
        self._uc = uc
        self.sys_regs = SysRegs(self)
        self._reset_context = uc.context_save()
        self.counter = BlockCounter(uc, native=native_counter)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                    | UC_HOOK_MEM_WRITE_PROT, self._on_memory)
        # The counter is read in guests' polling loops: the MRS/MSR hook bypasses the binding's
        # generic wrapper (3x cheaper per trap) and writes registers through the C API.
        self._sys_cbs = [_SYS_CFUNC(self._on_mrs), _SYS_CFUNC(self._on_msr)]
        for cb, insn in zip(self._sys_cbs, (A.UC_ARM64_INS_MRS, A.UC_ARM64_INS_MSR)):
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, cb, None, ctypes.c_uint64(1),
                                    ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise UcError(err)
        self._hook_error: BaseException | None = None
        self._value = ctypes.c_uint64()
        self._scratch = ctypes.c_uint64()
        # Register access through the C API: the binding's generic path costs ~3 us per register.
        self._uch = uc._uch
        self._args = (ctypes.c_uint64 * 4)()
        self._arg_ids = (ctypes.c_int32 * 4)(*_X_REGS[:4])
        self._arg_ptrs = (ctypes.c_void_p * 4)(*[ctypes.addressof(self._args) + 8 * i for i in range(4)])
        self._ram: list[tuple[int, int, memoryview]] = []  # (gpa, size, buffer) of the mapped slots
        self._mapped: list[tuple[int, int, bool, int]] = []
        self._buffers: list[object] = []  # ctypes views keeping the mapped buffers exported
        # Dirty logging: the log_generation each logging slot was last write-protected for (by
        # guest address), the logging slots, and the write-protect fault to serve (slot, addr, size).
        self._wp: dict[int, int | None] = {}
        self._logged: list[GuestRegion] = []
        self._wp_fault: tuple[GuestRegion, int, int] | None = None
        self._traps: VcpuTraps | None = None
        self._clock: Clock | None = None
        self._accounted = 0  # counter bytes already turned into time
        self._time_rem = 0  # instructions * 1e9 not yet a whole ns
        # Time of instructions executed past a deadline (the engine stops after the instruction
        # that reaches it): charged at the start of the next execute, so that where the host
        # splits the run never changes how much time the guest's instructions take.
        self._debt_ns = 0
        self._stop: Stop | None = None  # set by a hook to end the current execute()
        self._mmio: _PendingMmio | None = None
        self._fault: Stop | None = None
        self._halted = False
        self._polls = 0  # consecutive one-block runs with the interrupt asserted but masked
        self._el0_trap: int | None = None  # ESR of an EL0 counter read to deliver to EL1
        self.reset()

    # --- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """The vCPU-init state: all registers zero, EL1h, MMU off, DAIF masked, PC 0."""
        uc = self._uc
        uc.context_restore(self._reset_context)
        for reg in _X_REGS:
            uc.reg_write(reg, 0)
        uc.reg_write(A.UC_ARM64_REG_PSTATE, PSTATE_RESET)
        self._write_banks(0, 0)
        uc.reg_write(A.UC_ARM64_REG_PC, 0)
        self._mmio = None
        self._fault = None
        self._halted = False
        self._el0_trap = None

    def pstate(self) -> int:
        """The current PSTATE (NZCV, DAIF, mode)."""
        uclib.uc_reg_read(self._uch, A.UC_ARM64_REG_PSTATE, ctypes.byref(self._scratch))
        return self._scratch.value

    def _sp_el0_live(self, pstate: int | None = None) -> bool:
        """Is SP (the engine's x31) SP_EL0 now? At EL0, or at EL1 with SPSel = 0."""
        mode = (self.pstate() if pstate is None else pstate) & 0xF
        return mode & 1 == 0

    def _read_banks(self) -> tuple[int, int]:
        uc = self._uc
        live = uc.reg_read(A.UC_ARM64_REG_SP)
        if self._sp_el0_live():
            return live, uc.reg_read(A.UC_ARM64_REG_SP_EL1)
        return uc.reg_read(A.UC_ARM64_REG_SP_EL0), live

    def _write_banks(self, sp_el0: int, sp_el1: int) -> None:
        uc = self._uc
        uc.reg_write(A.UC_ARM64_REG_SP_EL0, sp_el0)
        uc.reg_write(A.UC_ARM64_REG_SP_EL1, sp_el1)
        uc.reg_write(A.UC_ARM64_REG_SP, sp_el0 if self._sp_el0_live() else sp_el1)

    def _set_pstate(self, value: int) -> None:
        """Write PSTATE, keeping SP_EL0/SP_EL1 banked correctly across an SPSel/EL change."""
        banks = self._read_banks()
        self._uc.reg_write(A.UC_ARM64_REG_PSTATE, value)
        # unicorn's PSTATE write leaves QEMU's cached hflags (the EL code is translated for) stale,
        # so an exception entry from EL0 would run the EL1 vector as EL0; a CP_REG write rebuilds them.
        self._uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, self._uc.reg_read(A.UC_ARM64_REG_CP_REG, _SPSR_EL1)))
        self._write_banks(*banks)

    def read_core(self, reg_id: int) -> int:
        """ONE_REG read of a core register by KVM id."""
        uc = self._uc
        for n in range(31):
            if reg_id == reg_x(n):
                return uc.reg_read(_X_REGS[n]) & U64
        if reg_id == REG_PC:
            return uc.reg_read(A.UC_ARM64_REG_PC) & U64
        if reg_id == REG_PSTATE:
            return self.pstate()
        if reg_id == REG_SP:
            return self._read_banks()[0] & U64
        if reg_id == REG_SP_EL1:
            return self._read_banks()[1] & U64
        if reg_id == REG_ELR_EL1:
            return uc.reg_read(A.UC_ARM64_REG_ELR_EL1) & U64
        if reg_id == REG_SPSR_EL1:
            return uc.reg_read(A.UC_ARM64_REG_CP_REG, _SPSR_EL1) & U64
        if reg_id in _V_REGS:
            return uc.reg_read(_V_REGS[reg_id]) & U128
        if reg_id == REG_FPSR:
            return uc.reg_read(A.UC_ARM64_REG_FPSR) & 0xFFFF_FFFF
        if reg_id == REG_FPCR:
            return uc.reg_read(A.UC_ARM64_REG_FPCR) & 0xFFFF_FFFF
        raise KeyError(reg_id)

    def write_core(self, reg_id: int, value: int) -> None:
        """ONE_REG write of a core register by KVM id."""
        uc = self._uc
        if reg_id in _V_REGS:
            uc.reg_write(_V_REGS[reg_id], value & U128)
            return
        if reg_id in (REG_FPSR, REG_FPCR):
            uc.reg_write(A.UC_ARM64_REG_FPSR if reg_id == REG_FPSR else A.UC_ARM64_REG_FPCR, value & 0xFFFF_FFFF)
            return
        value &= U64
        for n in range(31):
            if reg_id == reg_x(n):
                uc.reg_write(_X_REGS[n], value)
                return
        if reg_id == REG_PC:
            uc.reg_write(A.UC_ARM64_REG_PC, value)
            self._mmio = None  # a new PC abandons an unfinished MMIO access
        elif reg_id == REG_PSTATE:
            if value & 0x1F not in _VALID_MODES:
                raise ValueError(f"PSTATE {value:#x}: mode {value & 0x1F:#x} is not EL0t, EL1t or EL1h")
            self._set_pstate(value & 0xFFFF_FFFF)
        elif reg_id == REG_SP:
            self._write_banks(value, self._read_banks()[1])
        elif reg_id == REG_SP_EL1:
            self._write_banks(self._read_banks()[0], value)
        elif reg_id == REG_ELR_EL1:
            uc.reg_write(A.UC_ARM64_REG_ELR_EL1, value)
        elif reg_id == REG_SPSR_EL1:
            uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, value))
        else:
            raise KeyError(reg_id)

    def complete_mmio(self, data: bytes) -> None:
        """The data of the last MMIO read exit (kvm_run.mmio.data), for the next execute()."""
        if self._mmio is None or self._mmio.access.is_write:
            raise RuntimeError(f"vCPU {self.index}: no MMIO read is pending")
        self._mmio.data = bytes(data)

    def complete_pending(self) -> None:
        """KVM_RUN with immediate_exit: finish an MMIO access (a read with the data given, zeros if
        none, as KVM uses kvm_run.mmio.data) without executing; the state is then complete."""
        if self._mmio is not None:
            self._finish_mmio()

    def read_word(self, addr: int) -> int | None:
        """The 32-bit instruction word at a guest address, or None where nothing is mapped."""
        for gpa, size, buf in self._ram:
            off = addr - gpa
            if 0 <= off <= size - 4:
                return int.from_bytes(buf[off:off + 4], "little")
        return None

    def _pc(self) -> int:
        uclib.uc_reg_read(self._uch, A.UC_ARM64_REG_PC, ctypes.byref(self._scratch))
        return self._scratch.value

    # --- execution ---------------------------------------------------------------------------

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        """Run until the deadline, a halt, an exit request, an MMIO access, semihosting or a fault."""
        if self._fault is not None:
            return self._fault
        self._traps, self._clock = traps, clock
        if self._debt_ns:
            pay = min(self._debt_ns, clock.deadline_ns - clock.now_ns)
            clock.advance(pay)
            self._debt_ns -= pay
        self._sync_memory(traps)
        self._accounted = self.counter.used
        try:
            if self._mmio is not None:
                self._finish_mmio()
            return self._run(traps, clock)
        finally:
            self._account()
            self._traps = self._clock = None

    def _run(self, traps: VcpuTraps, clock: Clock) -> Stop:
        uc = self._uc
        while True:
            if traps.exit_requested():
                return Stop(StopKind.EXIT)
            pending = traps.irq_pending()
            if pending:
                self._halted = False  # WFI completes on an asserted interrupt, masked or not
                if not self.pstate() & PSTATE_I:
                    self._take_irq()
                    if self._fault is not None:
                        return self._fault
            if clock.now_ns >= clock.deadline_ns:
                return Stop(StopKind.DEADLINE)
            if self._halted:
                return Stop(StopKind.HALT)
            self._arm_budget(pending)  # taking the IRQ moved no time: the line is as it was
            self._stop = None
            try:
                uc.emu_start(self._pc(), _NEVER)
            except UcError as err:
                if self._stop is None and self._wp_fault is None:
                    self._stop = self._fault_stop(uc.reg_read(A.UC_ARM64_REG_PC), f"unicorn: {err}")
            if self._hook_error is not None:
                hook_error, self._hook_error = self._hook_error, None
                raise hook_error
            self._account()
            if self._wp_fault is not None:
                self._log_write()  # the store is retried when the engine resumes at its PC
                continue
            if self._el0_trap is not None:
                esr, self._el0_trap = self._el0_trap, None
                self._take_el0_trap(esr)
                if self._fault is not None:
                    return self._fault
                continue
            stop, self._stop = self._stop, None
            if stop is not None:
                if stop.kind is StopKind.FAULT:
                    self._fault = stop
                elif stop.kind is StopKind.SEMIHOSTING:
                    uc.reg_write(A.UC_ARM64_REG_PC, stop.pc + 4)
                if stop.kind is not StopKind.EXIT or traps.exit_requested():
                    return stop
                continue
            if self.counter.stopped:
                continue  # the budget ran out: deadline, timer event, or an IRQ to take
            pc = uc.reg_read(A.UC_ARM64_REG_PC)
            if self.read_word(pc - 4) == WFI:
                self._halted = True
                continue
            self._fault = self._fault_stop(pc, "the engine stopped for no known reason")
            return self._fault

    def _arm_budget(self, irq_pending: bool) -> None:
        """Let the engine run until the slice deadline or the next timer event, whichever is first."""
        traps, clock = self._traps, self._clock
        assert traps is not None and clock is not None
        now = clock.now_ns
        if irq_pending:
            if not self.pstate() & PSTATE_I:
                self.counter.arm(0)
                return
            self._polls += 1
            if self._polls <= POLL_BLOCKS:
                self.counter.arm(1)  # exactly one block
                return
            insns = POLL_INSNS
        else:
            self._polls = 0
            insns = 1 << 40
        until = clock.deadline_ns
        fire = traps.next_irq_ns()
        if fire is not None and fire > now:
            until = min(until, fire)
        # ceil: the engine must reach `until`, so that the event is due when it stops.
        need = -(-max(until - now, 0) * self.instructions_per_sec // NSEC_PER_SEC)
        self.counter.arm(4 * max(1, min(insns, need)))

    def _account(self) -> None:
        """Turn the instructions executed since the last call into virtual time."""
        used = self.counter.used
        insns = (used - self._accounted) // 4
        self._accounted = used
        if insns <= 0 or self._clock is None:
            return
        self.instructions += insns
        total = insns * NSEC_PER_SEC + self._time_rem
        ns, self._time_rem = divmod(total, self.instructions_per_sec)
        over = ns - (self._clock.deadline_ns - self._clock.now_ns)
        if over > 0:
            self._debt_ns += over
        self._clock.advance(ns)

    def _take_irq(self) -> None:
        """Architectural IRQ entry to EL1h (there is no EL2/EL3 in the guest's world)."""
        uc = self._uc
        pstate = self.pstate()
        mode = pstate & 0xF
        offset = 0x480 if mode >> 2 == 0 else (0x280 if mode & 1 else 0x080)
        pc = uc.reg_read(A.UC_ARM64_REG_PC)
        vbar = uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) & ~0x7FF
        if self.read_word(vbar + offset) is None:
            self._fault = self._fault_stop(pc, f"timer IRQ with VBAR_EL1 = {vbar:#x}: no code at the IRQ vector "
                                               f"{vbar + offset:#x}, the guest cannot take the exception")
            return
        uc.reg_write(A.UC_ARM64_REG_ELR_EL1, pc)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, pstate & 0xFFFF_FFFF))
        self._set_pstate((pstate & PSTATE_NZCV) | PSTATE_DAIF | PSTATE_EL1H)
        uc.reg_write(A.UC_ARM64_REG_PC, vbar + offset)

    def _take_el0_trap(self, esr: int) -> None:
        """Synchronous exception entry to EL1h from EL0 (VBAR_EL1 + 0x400) for a trapped MRS."""
        uc = self._uc
        pstate = self.pstate()
        pc = self._pc()  # the MRS: the preferred return address of a trapped instruction
        vbar = uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) & ~0x7FF
        if self.read_word(vbar + 0x400) is None:
            self._fault = self._fault_stop(pc, f"EL0 counter read trapped (CNTKCTL_EL1) with VBAR_EL1 = {vbar:#x}: "
                                               f"no code at the vector {vbar + 0x400:#x}, the guest cannot take "
                                               f"the exception")
            return
        uc.reg_write(A.UC_ARM64_REG_ESR_EL1, esr)
        uc.reg_write(A.UC_ARM64_REG_ELR_EL1, pc)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, pstate & 0xFFFF_FFFF))
        self._set_pstate((pstate & PSTATE_NZCV) | PSTATE_DAIF | PSTATE_EL1H)
        uc.reg_write(A.UC_ARM64_REG_PC, vbar + 0x400)

    def _el0_counter_trapped(self, sysreg: SysReg) -> bool:
        """An MRS of `sysreg` now is an EL0 counter read that CNTKCTL_EL1 does not enable."""
        enable = sysregs.EL0_COUNTER_ENABLE.get(sysreg)
        if enable is None or self.pstate() & 0xC:  # not a counter register, or not at EL0
            return False
        assert self._traps is not None
        return not self._traps.read_sysreg(sysregs.CNTKCTL_EL1) & enable

    def _finish_mmio(self) -> None:
        """kvm_handle_mmio_return: write a read's data to Rt, then step past the access."""
        pending, self._mmio = self._mmio, None
        assert pending is not None
        access = pending.access
        if not access.is_write and access.rt != 31:
            self._uc.reg_write(_X_REGS[access.rt], access.load_value(pending.data or bytes(access.size)))
        self._uc.reg_write(A.UC_ARM64_REG_PC, self._uc.reg_read(A.UC_ARM64_REG_PC) + 4)

    def _sync_memory(self, traps: VcpuTraps) -> None:
        """Map the VM's memslots (again, if the VMM changed them since the last run)."""
        slots = sorted(traps.memslots(), key=lambda s: s.guest_phys_addr)
        wanted = [(s.guest_phys_addr, s.memory_size, bool(s.readonly), id(s.buffer.obj)) for s in slots]
        if wanted != self._mapped:
            self._map(slots, wanted)
        self._protect_logged(slots)

    def _map(self, slots: list[GuestRegion], wanted: list[tuple[int, int, bool, int]]) -> None:
        uc = self._uc
        for gpa, size, _, _ in self._mapped:
            uc.mem_unmap(gpa, size)
        self._mapped, self._buffers, self._ram = [], [], []
        for slot, key in zip(slots, wanted):
            view = (ctypes.c_char * slot.memory_size).from_buffer(slot.buffer)
            prot = UC_PROT_READ | UC_PROT_EXEC | (0 if slot.readonly else UC_PROT_WRITE)
            uc.mem_map_ptr(slot.guest_phys_addr, slot.memory_size, prot, ctypes.addressof(view))
            self._buffers.append(view)
            self._ram.append((slot.guest_phys_addr, slot.memory_size, slot.buffer))
            self._mapped.append(key)
        self._wp = {}

    def _protect_logged(self, slots: list[GuestRegion]) -> None:
        """Write-protect every logging slot whose log was read since (KVM's stage-2 write protection
        after KVM_GET_DIRTY_LOG); make a slot writable again when its logging stops."""
        self._logged = []
        for slot in slots:
            if slot.readonly:
                continue
            gen = slot.log_generation if slot.dirty_logging else None
            if gen is not None:
                self._logged.append(slot)
            if self._wp.get(slot.guest_phys_addr) != gen:
                prot = UC_PROT_READ | UC_PROT_EXEC | (0 if gen is not None else UC_PROT_WRITE)
                self._uc.mem_protect(slot.guest_phys_addr, slot.memory_size, prot)
                self._wp[slot.guest_phys_addr] = gen

    def _log_write(self) -> None:
        """A guest store hit a write-protected page of a logging slot: mark it dirty, let it write."""
        fault, self._wp_fault = self._wp_fault, None
        assert fault is not None
        slot, address, size = fault
        off = address - slot.guest_phys_addr
        end = min(off + max(size, 1), slot.memory_size)
        slot.mark_dirty(off, end - off)
        first = off - off % PAGE_SIZE
        last = (end - 1) - (end - 1) % PAGE_SIZE + PAGE_SIZE
        self._uc.mem_protect(slot.guest_phys_addr + first, last - first, UC_PROT_READ | UC_PROT_EXEC | UC_PROT_WRITE)

    # --- diagnostics -------------------------------------------------------------------------

    def _fault_stop(self, pc: int, reason: str, word: int | None = None) -> Stop:
        if word is None:
            word = self.read_word(pc)
        text = disassemble(word, pc) if word is not None else "(no memory at the PC)"
        return Stop(StopKind.FAULT, pc=pc, instruction=text, reason=reason)

    # --- hooks (called by unicorn while emu_start runs) ------------------------------------------

    def _on_interrupt(self, uc: Uc, intno: int, user: object) -> None:
        if intno in (_EXCP_HVC, _EXCP_SMC):
            self._hypercall(uc, Conduit.HVC if intno == _EXCP_HVC else Conduit.SMC)
            return
        pc = uc.reg_read(A.UC_ARM64_REG_PC)
        if intno == _EXCP_SWI:
            pc -= 4  # the PC is already past an SVC
        word = self.read_word(pc)
        if intno == _EXCP_UDEF and word is not None and word & 0xFFF0_0000 == 0xD530_0000:  # MRS
            op0, op1, crn, crm, op2 = 2 | (word >> 19) & 1, (word >> 16) & 7, (word >> 12) & 15, (word >> 8) & 15, \
                (word >> 5) & 7
            sysreg = _TRAPPED.get((op0, op1, crn, crm, op2))
            if sysreg is not None and self._el0_counter_trapped(sysreg):
                # The engine's own access check refused it (its CNTKCTL_EL1 stays 0: the hypervisor
                # serves that register): take the architectural trap to EL1 (after emu_start).
                iss = op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | (word & 31) << 5 | crm << 1 | 1
                self._el0_trap = _EC_SYSREG << 26 | _ESR_IL | iss
                uc.emu_stop()
                return
        if intno == _EXCP_UDEF and word == HLT_SEMIHOSTING:
            self._stop = Stop(StopKind.SEMIHOSTING, pc=pc, semihost_op=uc.reg_read(A.UC_ARM64_REG_X0) & 0xFFFF_FFFF,
                              semihost_param=uc.reg_read(A.UC_ARM64_REG_X1) & U64)
        else:
            reason = _EXCP_NAMES.get(intno, f"exception {intno} the guest cannot take")
            self._stop = self._fault_stop(pc, reason, word)
        uc.emu_stop()

    def _hypercall(self, uc: Uc, conduit: Conduit) -> None:
        traps = self._traps
        assert traps is not None
        self._account()
        imm = 0
        if conduit is Conduit.SMC:  # KVM ignores the HVC immediate; an SMC's matters
            imm = ((self.read_word(self._pc() - 4) or 0) >> 5) & 0xFFFF
        args = self._args
        _reg_read_batch(self._uch, self._arg_ids, self._arg_ptrs, 4)
        regs = list(args)
        try:
            traps.hypercall(regs, conduit, imm)
        except GuestFault as fault:
            pc = self._pc() - 4  # the PC is past the HVC/SMC, as on exception return
            self._stop = self._fault_stop(pc, fault.reason)
            uc.emu_stop()
            return
        args[:] = [v & U64 for v in regs]
        _reg_write_batch(self._uch, self._arg_ids, self._arg_ptrs, 4)
        if traps.exit_requested():
            self._stop = Stop(StopKind.EXIT)
            uc.emu_stop()
        elif self._clock is not None and self._clock.now_ns >= self._clock.deadline_ns:
            # The call woke another vCPU (PSCI CPU_ON): the host ends this segment here.
            self._stop = Stop(StopKind.DEADLINE)
            uc.emu_stop()
        # No timer is an SMCCC/PSCI call's business: otherwise the budget stands.

    def _on_memory(self, uc: Uc, access: int, address: int, size: int, value: int, user: object) -> bool:
        if access == UC_MEM_WRITE_PROT:
            for slot in self._logged:
                if slot.guest_phys_addr <= address < slot.guest_phys_addr + slot.memory_size:
                    self._wp_fault = (slot, address, size)  # served in _run (not in a hook)
                    uc.emu_stop()
                    return False
        pc = self._pc()
        if access == UC_MEM_FETCH_UNMAPPED:
            self._stop = Stop(StopKind.FAULT, pc=address, instruction="(no memory at the PC)",
                              reason=f"instruction fetch from {address:#x}, which no memslot backs")
            return False
        word = self.read_word(pc)
        mmio = decode(word) if word is not None else None
        is_write = access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT)
        if mmio is None or mmio.is_write != is_write:
            what = "store to" if is_write else "load from"
            self._stop = self._fault_stop(pc, f"{what} {address:#x} outside RAM by an instruction KVM cannot "
                                              f"emulate (no valid syndrome: not a single-register access "
                                              f"without writeback)", word)
            return False
        if is_write:
            data = (value & ((1 << (8 * mmio.size)) - 1)).to_bytes(mmio.size, "little")
        else:
            data = b""
        self._mmio = _PendingMmio(mmio)
        self._stop = Stop(StopKind.MMIO, pc=pc, mmio_addr=address, mmio_len=mmio.size, mmio_data=data,
                          mmio_write=is_write)
        return False

    def _on_mrs(self, handle: int, reg: int, cp: ctypes._Pointer, user: int) -> int:  # type: ignore[type-arg]
        c = cp.contents
        sysreg = _TRAPPED.get((c.op0, c.op1, c.crn, c.crm, c.op2))
        if sysreg is None:
            return 0  # the engine's own register
        try:
            if self._el0_counter_trapped(sysreg):
                return 0  # the engine raises UNDEF at the MRS: _on_interrupt turns it into the trap
            self.counter.charge(4 * SYSREG_ACCESS_INSNS)
            self._account()  # the counter must include the instructions executed so far
            assert self._traps is not None
            self._value.value = self._traps.read_sysreg(sysreg) & U64
            if reg in _REG_IDS:
                uclib.uc_reg_write(handle, reg, ctypes.byref(self._value))
        except GuestFault as fault:
            self._sysreg_fault(fault)
        except BaseException as err:  # noqa: BLE001 - re-raised after emu_start returns
            self._hook_failed(err)
        return 1

    def _on_msr(self, handle: int, reg: int, cp: ctypes._Pointer, user: int) -> int:  # type: ignore[type-arg]
        c = cp.contents
        sysreg = _TRAPPED.get((c.op0, c.op1, c.crn, c.crm, c.op2))
        if sysreg is None:
            return 0
        try:
            self.counter.charge(4 * SYSREG_ACCESS_INSNS)
            self._account()
            assert self._traps is not None
            self._traps.write_sysreg(sysreg, c.val & U64)
            self._arm_budget(self._traps.irq_pending())  # the timer may fire earlier (or now)
        except GuestFault as fault:
            self._sysreg_fault(fault)
        except BaseException as err:  # noqa: BLE001
            self._hook_failed(err)
        return 1

    def _sysreg_fault(self, fault: GuestFault) -> None:
        pc = self._uc.reg_read(A.UC_ARM64_REG_PC)
        self._stop = self._fault_stop(pc, fault.reason)
        self.counter.arm(0)  # stop at the next block: an MSR/MRS does not end its block

    def _hook_failed(self, err: BaseException) -> None:
        if self._hook_error is None:
            self._hook_error = err
        self._uc.emu_stop()


class _CpReg(ctypes.Structure):
    """uc_arm64_cp_reg, as the MRS/MSR hook receives it."""

    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


_SYS_CFUNC = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(_CpReg),
                              ctypes.c_void_p)
_REG_IDS = frozenset(_X_REGS)
