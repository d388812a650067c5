"""The unicorn CPU backend: one vCPU executing AArch64 machine code in unicorn (the QEMU engine).

What the hypervisor sees is what KVM/arm64 gives a VMM:

- Memory (`memory`): every memslot is mapped into the vCPU's engine, shared with the other vCPUs
  and the VMM. A data access no memslot backs, or a write to a read-only slot, is an MMIO exit
  when it has a valid syndrome, an internal error otherwise. Dirty logging is KVM's stage-2 write
  protection.
- The vCPU is an AArch64 EL1 as KVM makes it: EL2 and EL3 exist only to route HVC and SMC to the
  hypervisor (SCR_EL3.NS/HCE/RW) and to make EL1 AArch64 (HCR_EL2.RW), so that an ERET to EL1 is
  legal and the guest's MMU walks AArch64 tables.
- Traps (`traps`): HVC and SMC go to the SMCCC dispatch (the calls with a fixed answer are
  answered by a native fast path, `fast_traps`, as are counter reads); MRS/MSR of the generic-timer registers
  and MPIDR_EL1 are served by the hypervisor, picked out by a native filter (`native`); `HLT
  #0xF000` (Arm semihosting) stops for the VMM; an EL0 counter read that CNTKCTL_EL1 does not
  enable traps to EL1. A TLBI or IC makes the other vCPUs' engines drop their translations.
- Interrupts: there is no GIC. The only interrupt is the timers' level line (ENABLE && !IMASK &&
  count >= CVAL, from the hypervisor's `irq_pending`). When it is asserted and PSTATE.I is clear,
  the backend takes the architectural IRQ exception to EL1h (`exceptions`). The guest acknowledges
  the interrupt by reprogramming its timer (CVAL/TVAL forward, or CTL.IMASK/ENABLE), which drops
  the line. A masked line is polled (`run`).
- WFI: the engine returns at a WFI; with no interrupt asserted (masked or not) the vCPU halts
  until its next timer event (`StopKind.HALT`). WFE is executed by unicorn as a no-op, which the
  architecture allows (a WFE may complete at any time).
- Synchronous exceptions (`exceptions`, `syndrome`): SVC, BRK, undefined instructions, trapped
  system-register accesses and the guest's own MMU faults are taken to EL1 with their ESR and FAR.
- Faults: an instruction fetch outside RAM, an MMIO access without a valid syndrome, or an
  exception the guest cannot take (no code at its vector) stop this vCPU with `StopKind.FAULT`
  naming the PC, the disassembled instruction and the reason. The vCPU stays stopped; nothing
  else is affected.
- Time (`run`): guest instructions advance virtual time at `instructions_per_sec`, counted per
  translation block by a native hook (`native`); each run of the engine is bounded by the slice
  deadline and the next timer event.

With the MMU on, the PC is virtual: instructions are read through the vCPU's translation (`memory`).

The modules: `run` (the vCPU, its run loop and budget), `registers`, `exceptions` (entry to EL1),
`syndrome` (an exception's ESR and FAR, read from unicorn), `traps` (the hooks unicorn calls),
`memory` (memslots, dirty logging, MMIO, translations), `native` (the block counter and the
system-register filter in C, and their Python twins), `fast_traps` (counter reads and fixed-answer
hypercalls served in C from parameters the hypervisor publishes, and their Python twins).
"""

from pvtime.cpu.unicorn.run import DEFAULT_INSTRUCTIONS_PER_SEC, UnicornCpu
from pvtime.cpu.unicorn.traps import SYSREG_ACCESS_INSNS

__all__ = ["DEFAULT_INSTRUCTIONS_PER_SEC", "SYSREG_ACCESS_INSNS", "UnicornCpu"]
