"""The unicorn CPU backend: one vCPU executing AArch64 machine code in unicorn (the QEMU engine).

What the hypervisor sees is what KVM/arm64 gives a VMM:

- Memory (`memory`): every memslot is mapped into the vCPU's engine, shared with the other vCPUs
  and the VMM. A data access no memslot backs, or a write to a read-only slot, is an MMIO exit
  when it has a valid syndrome, an internal error otherwise. Dirty logging is KVM's stage-2 write
  protection.
- Traps (`traps`): HVC and SMC go to the SMCCC dispatch; MRS/MSR of the generic-timer registers
  and MPIDR_EL1 are served by the hypervisor; `HLT #0xF000` (Arm semihosting) stops for the VMM;
  an EL0 counter read that CNTKCTL_EL1 does not enable traps to EL1.
- Interrupts: there is no GIC. The only interrupt is the timers' level line (ENABLE && !IMASK &&
  count >= CVAL, from the hypervisor's `irq_pending`). When it is asserted and PSTATE.I is clear,
  the backend takes the architectural IRQ exception to EL1h (`exceptions`). The guest acknowledges
  the interrupt by reprogramming its timer (CVAL/TVAL forward, or CTL.IMASK/ENABLE), which drops
  the line. A masked line is polled (`run`).
- WFI: the engine returns at a WFI; with no interrupt asserted (masked or not) the vCPU halts
  until its next timer event (`StopKind.HALT`). WFE is executed by unicorn as a no-op, which the
  architecture allows (a WFE may complete at any time).
- Faults: an instruction fetch outside RAM, an undefined instruction, an MMIO access without a
  valid syndrome, or an exception the guest would have to take itself (SVC, BRK, aborts) stop
  this vCPU with `StopKind.FAULT` naming the PC, the disassembled instruction and the reason. The
  vCPU stays stopped; nothing else is affected.
- Time (`run`): guest instructions advance virtual time at `instructions_per_sec`, counted per
  translation block by a native hook (`native`); each run of the engine is bounded by the slice
  deadline and the next timer event.

The modules: `run` (the vCPU, its run loop and budget), `registers`, `exceptions` (entry to EL1),
`traps` (the hooks unicorn calls), `memory` (memslots, dirty logging, MMIO), `native` (the block
counter in C, and its Python twin).
"""

from pvtime.cpu.unicorn.run import DEFAULT_INSTRUCTIONS_PER_SEC, UnicornCpu
from pvtime.cpu.unicorn.traps import SYSREG_ACCESS_INSNS

__all__ = ["DEFAULT_INSTRUCTIONS_PER_SEC", "SYSREG_ACCESS_INSNS", "UnicornCpu"]
