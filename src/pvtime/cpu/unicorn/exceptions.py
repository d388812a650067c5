"""Exception entry to EL1: how the guest takes an IRQ, or a synchronous exception of its own.

There is no EL2 or EL3 in the guest's world, so every exception the vCPU takes goes to EL1 as the
architecture describes (AArch64.TakeException): ELR_EL1 = the preferred return address, SPSR_EL1 =
PSTATE, ESR_EL1 = the syndrome (synchronous exceptions), FAR_EL1 = the faulting address (aborts),
PSTATE.DAIF all set, EL1h with SP_EL1, PC = VBAR_EL1 + the vector: the group of where the
exception came from (0x000 current EL with SP_EL0, 0x200 current EL with SP_ELx, 0x400 lower EL
in AArch64) plus its kind (0x000 synchronous, 0x080 IRQ). `take_exception` is the one entry
routine, for the timer IRQ and for synchronous exceptions alike.

Unicorn never takes an exception itself. SVC, BRK, undefined instructions and instruction/data
aborts (the MMU's translation, access flag and permission faults) reach the interrupt hook with
the PC where the architecture's preferred return address is (past an SVC, at the instruction for
the others), and the hypervisor does the entry.

Where ESR and FAR come from -- the decision of the spike (unicorn 2.1.4, both host
architectures). Unicorn exposes neither: ESR_EL1/FAR_EL1 read in the hook hold their old values,
no UC_ARM64_REG_* holds the pending syndrome, and the hook gets only QEMU's exception number. But
QEMU has computed the full record before the hook runs (the syndrome with the abort's DFSC/IFSC,
WnR and level, the EC of a trapped system-register access, the faulting virtual address), and
`uc_context_save` copies it with the CPU state. `syndrome` reads it from there, at an offset found
at run time by probing exceptions whose ESR/FAR the architecture fixes (tested), not at a
hard-coded one. That is exact for every exception QEMU raises, and costs one context copy per
exception. The fallbacks were weighed and not taken: decoding SVC/BRK/UDF from the instruction
is easy, but an abort's FAR needs the address of every load/store form (pairs, SIMD, atomics,
writeback, register offsets) and its fault status a software walk of the guest's tables that
would have to agree with QEMU's own. If a unicorn build hides the record (calibration fails),
such an exception stops the vCPU with a fault saying so.
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

# ESR_ELx.EC of a trapped FP/SIMD access: QEMU keeps AArch32 fields in its ISS, which an AArch64
# ESR has as 0 (its arm_cpu_do_interrupt_aarch64 clears them on entry, as `traps` does).
EC_FP_ACCESS = 0x07


def esr_ec(esr: int) -> int:
    """ESR_ELx.EC, the exception class."""
    return (esr >> 26) & 0x3F


def take_exception(regs: Registers, memory: GuestMemory, kind: int, cause: str, esr: int | None = None,
                   far: int | None = None, at: int | None = None) -> Stop | None:
    """Enter EL1h at the vector for `kind`, with the PC as the preferred return address (the next
    instruction for an IRQ or SVC, the faulting one otherwise), writing ESR_EL1 and FAR_EL1 when
    given. Returns the fault that stops the vCPU when no code is mapped at the vector: the guest
    cannot take the exception (`at`: the instruction to name in that fault, the PC by default)."""
    pstate = regs.pstate()
    mode = pstate & 0xF
    group = 0x400 if mode >> 2 == 0 else (0x200 if mode & 1 else 0x000)
    pc = regs.pc()
    vbar = regs.uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) & ~0x7FF
    vector = vbar + group + kind
    regs.enter_el1h(vector, pc, pstate & U32, (pstate & PSTATE_NZCV) | PSTATE_DAIF | PSTATE_EL1H, esr, far)
    # Checked at EL1, where the vector is fetched (from EL0, the kernel's pages are not executable).
    if memory.fetch(vector) is not None:
        return None
    regs.set_pstate(pstate)  # the vCPU stops where the exception arose
    regs.set_pc(pc)
    return memory.fault_stop(pc if at is None else at,
                             f"{cause} with VBAR_EL1 = {vbar:#x}: no code at the {_KIND_NAMES[kind]} "
                             f"vector {vector:#x}, the guest cannot take the exception")
