"""Exception entry to EL1: how the guest takes an IRQ or a trapped instruction.

There is no EL2 or EL3 in the guest's world, so every exception the hypervisor delivers is taken
to EL1h as the architecture describes: ELR_EL1 = the preferred return
address, SPSR_EL1 = PSTATE, ESR_EL1 = the syndrome (synchronous exceptions), PSTATE.DAIF all set,
EL1h with SP_EL1, PC = VBAR_EL1 + the vector: the group of where the exception came from (0x000
EL1t, 0x200 EL1h, 0x400 EL0) plus its kind (0x000 synchronous, 0x080 IRQ).
"""

from __future__ import annotations

from unicorn import arm64_const as A

from pvtime.abi.widths import U32
from pvtime.cpu.backend import Stop
from pvtime.cpu.unicorn.memory import GuestMemory
from pvtime.cpu.unicorn.registers import PSTATE_DAIF, PSTATE_EL1H, PSTATE_NZCV, Registers

# Vector offsets of the exception kinds within a group.
SYNC = 0x000
IRQ = 0x080
_KIND_NAMES = {SYNC: "synchronous", IRQ: "IRQ"}

_EC_SYSREG = 0x18  # ESR_ELx.EC of a trapped MSR/MRS/system instruction
_ESR_IL = 1 << 25


def sysreg_encoding(word: int) -> tuple[int, int, int, int, int]:
    """(op0, op1, CRn, CRm, op2) of the MRS/MSR instruction `word`."""
    return 2 | (word >> 19) & 1, (word >> 16) & 7, (word >> 12) & 15, (word >> 8) & 15, (word >> 5) & 7


def sysreg_trap_syndrome(word: int) -> int:
    """ESR_EL1 for a trapped MRS `word`: EC 0x18, ISS = its encoding, Rt and direction (a read)."""
    op0, op1, crn, crm, op2 = sysreg_encoding(word)
    iss = op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | (word & 31) << 5 | crm << 1 | 1
    return _EC_SYSREG << 26 | _ESR_IL | iss


def take_exception(regs: Registers, memory: GuestMemory, kind: int, cause: str, esr: int | None = None) -> Stop | None:
    """Enter EL1h at the vector for `kind` with the PC as the preferred return address (the next
    instruction for an IRQ, the trapped one for a synchronous trap). Returns the fault that stops
    the vCPU when no code is mapped at the vector: the guest cannot take the exception."""
    uc = regs.uc
    pstate = regs.pstate()
    mode = pstate & 0xF
    group = 0x400 if mode >> 2 == 0 else (0x200 if mode & 1 else 0x000)
    pc = regs.pc()
    vbar = uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) & ~0x7FF
    vector = vbar + group + kind
    if memory.read_word(vector) is None:
        return memory.fault_stop(pc, f"{cause} with VBAR_EL1 = {vbar:#x}: no code at the {_KIND_NAMES[kind]} "
                                     f"vector {vector:#x}, the guest cannot take the exception")
    if esr is not None:
        uc.reg_write(A.UC_ARM64_REG_ESR_EL1, esr)
    uc.reg_write(A.UC_ARM64_REG_ELR_EL1, pc)
    regs.write_spsr_el1(pstate & U32)
    regs.set_pstate((pstate & PSTATE_NZCV) | PSTATE_DAIF | PSTATE_EL1H)
    regs.set_pc(vector)
    return None
