"""The vCPU's registers in the engine, as KVM/arm64 presents them.

`Registers` reads and writes one engine's register file: the core registers by ONE_REG id
(struct kvm_regs), PSTATE with the stack pointers banked as the architecture banks them, and the
fast paths the traps need (PC, PSTATE, x0..x3, an exception entry's writes, through unicorn's C
API: the binding's generic path costs about 3 us per register). `CoreRegs` and `SysRegs` are the
mappings `Vcpu`'s ONE_REG calls use.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

from unicorn import Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi.uapi import (
    CORE_REG_IDS, EL1_SYSREG_IDS, REG_ELR_EL1, REG_FPCR, REG_FPSR, REG_PC, REG_PSTATE, REG_SP, REG_SP_EL1,
    REG_SPSR_EL1, reg_v, reg_x,
)
from pvtime.abi.widths import U32, U64
from pvtime.cpu.unicorn.native import CpReg

if TYPE_CHECKING:
    from pvtime.cpu.unicorn.run import UnicornCpu

# PSTATE: N Z C V | D A I F (bits 9..6) | M[3:0] (EL in 3:2, SPSel in 0).
PSTATE_I = 1 << 7
PSTATE_DAIF = 0xF << 6
PSTATE_NZCV = 0xF << 28
PSTATE_EL1H = 0b0101
PSTATE_RESET = PSTATE_DAIF | PSTATE_EL1H  # KVM's vCPU reset: EL1h, DAIF masked

X_REGS = [getattr(A, f"UC_ARM64_REG_X{i}") for i in range(31)]
_X_IDS = {reg_x(n): reg for n, reg in enumerate(X_REGS)}
_V_REGS = {reg_v(i): getattr(A, f"UC_ARM64_REG_Q{i}") for i in range(32)}
U128 = (1 << 128) - 1

# SCR_EL3 (op0=3, op1=6, CRn=1, CRm=1, op2=0): NS | HCE | RW, so that HVC is enabled and EL1 is
# AArch64 (unicorn starts with SCR_EL3 = 0, where HVC is UNDEFINED).
_SCR_EL3 = (1, 1, 3, 6, 0)
_SCR_NS_HCE_RW = (1 << 0) | (1 << 8) | (1 << 10)
# HCR_EL2 (op0=3, op1=4, CRn=1, CRm=1, op2=0): RW, EL1 is AArch64, as KVM sets it for an AArch64
# vCPU. unicorn starts with 0 (EL1 AArch32): an ERET to EL1 is then an illegal return, and the
# EL1&0 MMU walks the wrong table format.
_HCR_EL2 = (1, 1, 3, 4, 0)
_HCR_RW = 1 << 31
_SPSR_EL1 = (4, 0, 3, 0, 0)  # (CRn, CRm, op0, op1, op2): unicorn has no plain id for it


# An exception entry's writes, in this order: the syndrome registers, the new PSTATE, the stack
# pointers banked for it, the PC; SPSR_EL1 last, as a CP_REG write, which also rebuilds the EL
# state QEMU translates code for (see `set_pstate`).
_ENTRY_REGS = (A.UC_ARM64_REG_ESR_EL1, A.UC_ARM64_REG_FAR_EL1, A.UC_ARM64_REG_ELR_EL1, A.UC_ARM64_REG_PSTATE,
               A.UC_ARM64_REG_SP_EL0, A.UC_ARM64_REG_SP_EL1, A.UC_ARM64_REG_SP, A.UC_ARM64_REG_PC,
               A.UC_ARM64_REG_CP_REG)
_BANK_REGS = (A.UC_ARM64_REG_SP, A.UC_ARM64_REG_SP_EL0, A.UC_ARM64_REG_SP_EL1)


class Registers:
    """One engine's register file: set up for a KVM guest (HVC enabled, EL1 AArch64), reset, read
    and written."""

    def __init__(self, uc: Uc) -> None:
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SCR_EL3, _SCR_NS_HCE_RW))
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_HCR_EL2, _HCR_RW))
        self.uc = uc
        self._uch = uc._uch  # noqa: SLF001 - the engine handle, for the C API
        self._reset_context = uc.context_save()
        self._scratch = ctypes.c_uint64()
        self._scratch32 = ctypes.c_uint32()
        self._args = (ctypes.c_uint64 * 4)()
        self._arg_ids = (ctypes.c_int32 * 4)(*X_REGS[:4])
        self._arg_ptrs = (ctypes.c_void_p * 4)(*[ctypes.addressof(self._args) + 8 * i for i in range(4)])
        self._banks = (ctypes.c_uint64 * 3)()
        self._bank_ids = (ctypes.c_int32 * 3)(*_BANK_REGS)
        self._bank_ptrs = (ctypes.c_void_p * 3)(*[ctypes.addressof(self._banks) + 8 * i for i in range(3)])
        self._spsr = CpReg(*_SPSR_EL1)
        self._entry = (ctypes.c_uint64 * (len(_ENTRY_REGS) - 1))()
        self._entry_ids = (ctypes.c_int32 * len(_ENTRY_REGS))()
        self._entry_ptrs = (ctypes.c_void_p * len(_ENTRY_REGS))()

    def reset(self) -> None:
        """The vCPU-init state: all registers zero, EL1h, MMU off, DAIF masked, PC 0."""
        uc = self.uc
        uc.context_restore(self._reset_context)
        for reg in X_REGS:
            uc.reg_write(reg, 0)
        uc.reg_write(A.UC_ARM64_REG_PSTATE, PSTATE_RESET)
        self._write_banks(0, 0)
        uc.reg_write(A.UC_ARM64_REG_PC, 0)

    # --- fast paths ----------------------------------------------------------------------------

    def pc(self) -> int:
        uclib.uc_reg_read(self._uch, A.UC_ARM64_REG_PC, ctypes.byref(self._scratch))
        return self._scratch.value

    def set_pc(self, value: int) -> None:
        self._set64(A.UC_ARM64_REG_PC, value)

    def _set64(self, reg: int, value: int) -> None:
        """Write a 64-bit register through the C API (what the binding's reg_write does, without
        its per-call dispatch)."""
        self._scratch.value = value & U64
        uclib.uc_reg_write(self._uch, reg, ctypes.byref(self._scratch))

    def pstate(self) -> int:
        """The current PSTATE (NZCV, DAIF, mode)."""
        # unicorn stores PSTATE as 32 bits: read it into a 32-bit cell, or the upper half of a
        # reused 64-bit one (last holding the PC) would come back with it.
        uclib.uc_reg_read(self._uch, A.UC_ARM64_REG_PSTATE, ctypes.byref(self._scratch32))
        return self._scratch32.value

    def read_args(self) -> list[int]:
        """x0..x3 (an SMCCC call's arguments) in one call."""
        uclib.uc_reg_read_batch(self._uch, self._arg_ids, self._arg_ptrs, 4)
        return list(self._args)

    def write_args(self, values: list[int]) -> None:
        """x0..x3 (an SMCCC call's results) in one call."""
        self._args[:] = [v & U64 for v in values]
        uclib.uc_reg_write_batch(self._uch, self._arg_ids, self._arg_ptrs, 4)

    def write_x(self, n: int, value: int) -> None:
        self._set64(X_REGS[n], value)

    def enter_el1h(self, vector: int, elr: int, spsr: int, pstate: int, esr: int | None, far: int | None) -> None:
        """An exception entry's register writes, in two C calls: ESR_EL1 and FAR_EL1 (when given),
        ELR_EL1, PSTATE (an EL1h one) with SP_EL1 now the live stack pointer, PC = `vector`,
        SPSR_EL1."""
        uclib.uc_reg_read_batch(self._uch, self._bank_ids, self._bank_ptrs, 3)
        live, sp_el0, sp_el1 = self._banks
        if self.pstate() & 1 == 0:  # the live SP was SP_EL0 (EL0, EL1t); the banked copy may be stale
            sp_el0 = live
        else:
            sp_el1 = live
        values = (esr, far, elr, pstate, sp_el0, sp_el1, sp_el1, vector)
        n = 0
        for reg, value in zip(_ENTRY_REGS, values, strict=False):
            if value is not None:
                self._entry_ids[n] = reg
                self._entry[n] = value & U64
                self._entry_ptrs[n] = ctypes.addressof(self._entry) + 8 * n
                n += 1
        self._spsr.val = spsr & U64
        self._entry_ids[n] = A.UC_ARM64_REG_CP_REG
        self._entry_ptrs[n] = ctypes.addressof(self._spsr)
        uclib.uc_reg_write_batch(self._uch, self._entry_ids, self._entry_ptrs, n + 1)

    # --- PSTATE and the banked stack pointers ---------------------------------------------------

    def set_pstate(self, value: int) -> None:
        """Write PSTATE, keeping SP_EL0/SP_EL1 banked correctly across an SPSel/EL change."""
        banks = self._read_banks()
        uc = self.uc
        uc.reg_write(A.UC_ARM64_REG_PSTATE, value)
        # unicorn's PSTATE write leaves QEMU's cached hflags (the EL code is translated for) stale,
        # so an exception entry from EL0 would run the EL1 vector as EL0; a CP_REG write rebuilds them.
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, uc.reg_read(A.UC_ARM64_REG_CP_REG, _SPSR_EL1)))
        self._write_banks(*banks)

    def write_spsr_el1(self, value: int) -> None:
        self.uc.reg_write(A.UC_ARM64_REG_CP_REG, (*_SPSR_EL1, value))

    def _sp_el0_live(self) -> bool:
        """Is SP (the engine's x31) SP_EL0 now? At EL0, or at EL1 with SPSel = 0."""
        return self.pstate() & 1 == 0

    def _read_banks(self) -> tuple[int, int]:
        uc = self.uc
        live = uc.reg_read(A.UC_ARM64_REG_SP)
        if self._sp_el0_live():
            return live, uc.reg_read(A.UC_ARM64_REG_SP_EL1)
        return uc.reg_read(A.UC_ARM64_REG_SP_EL0), live

    def _write_banks(self, sp_el0: int, sp_el1: int) -> None:
        uc = self.uc
        uc.reg_write(A.UC_ARM64_REG_SP_EL0, sp_el0)
        uc.reg_write(A.UC_ARM64_REG_SP_EL1, sp_el1)
        uc.reg_write(A.UC_ARM64_REG_SP, sp_el0 if self._sp_el0_live() else sp_el1)

    # --- ONE_REG -------------------------------------------------------------------------------

    def read_core(self, reg_id: int) -> int:
        """ONE_REG read of a core register by KVM id (KeyError for an unknown id)."""
        uc = self.uc
        if reg_id in _X_IDS:
            return uc.reg_read(_X_IDS[reg_id]) & U64
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
            return uc.reg_read(A.UC_ARM64_REG_FPSR) & U32
        if reg_id == REG_FPCR:
            return uc.reg_read(A.UC_ARM64_REG_FPCR) & U32
        raise KeyError(reg_id)

    def write_core(self, reg_id: int, value: int) -> None:
        """ONE_REG write of a core register by KVM id: KeyError for an unknown id; ValueError, the
        register unchanged, for a value the engine does not keep as written (bits of FPSR, FPCR or
        PSTATE this CPU does not implement), so that a value accepted reads back unchanged."""
        old = self.read_core(reg_id)
        self._write_core(reg_id, value)
        now = self.read_core(reg_id)
        if now != value:
            self._write_core(reg_id, old)
            raise ValueError(f"{value:#x} written, the register reads {now:#x} (bits this CPU does not keep)")

    def _write_core(self, reg_id: int, value: int) -> None:
        uc = self.uc
        if reg_id in _X_IDS:
            uc.reg_write(_X_IDS[reg_id], value & U64)
        elif reg_id in _V_REGS:
            uc.reg_write(_V_REGS[reg_id], value & U128)
        elif reg_id in (REG_FPSR, REG_FPCR):
            uc.reg_write(A.UC_ARM64_REG_FPSR if reg_id == REG_FPSR else A.UC_ARM64_REG_FPCR, value & U32)
        elif reg_id == REG_PC:
            uc.reg_write(A.UC_ARM64_REG_PC, value & U64)
        elif reg_id == REG_PSTATE:
            self.set_pstate(value & U32)
        elif reg_id == REG_SP:
            self._write_banks(value & U64, self._read_banks()[1])
        elif reg_id == REG_SP_EL1:
            self._write_banks(self._read_banks()[0], value & U64)
        elif reg_id == REG_ELR_EL1:
            uc.reg_write(A.UC_ARM64_REG_ELR_EL1, value & U64)
        elif reg_id == REG_SPSR_EL1:
            self.write_spsr_el1(value & U64)
        else:
            raise KeyError(reg_id)


class CoreRegs(MutableMapping[int, int]):
    """The vCPU's KVM_REG_ARM_CORE registers, read and written in the engine.

    A mapping over `CORE_REG_IDS`; `clear()` is the vCPU reset. An unknown core id raises
    KeyError, a value the engine cannot hold ValueError (KVM answers ENOENT and EINVAL).
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

    def __init__(self, uc: Uc) -> None:
        self._uc = uc

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
        old = self[reg_id]
        self._write(reg_id, value)
        now = self[reg_id]
        if now != value:
            self._write(reg_id, old)  # a refused write leaves the register as it was
            raise ValueError(f"{value:#x} written, the register reads {now:#x} (fixed or RAZ/WI bits)")

    def _write(self, reg_id: int, value: int) -> None:
        r = EL1_SYSREG_IDS[reg_id]
        self._uc.reg_write(A.UC_ARM64_REG_CP_REG, (r.crn, r.crm, r.op0, r.op1, r.op2, value & U64))
