"""What a model guest sees of its machine, and the actions its program yields.

A model guest program is a generator per vCPU: it calls the `GuestCpu` synchronously for
hypercalls, RAM and system registers, and yields `Compute` (execute instructions for some CPU
time), `WaitForInterrupt` (WFI) or a device access (`MmioRead`/`MmioWrite`, which exit to the VMM). Between steps the CPU takes timer interrupts, calling the
program's `irq` handler, exactly where a real CPU would take the IRQ exception.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

from pvtime.abi.sysregs import SysReg


class GuestPanic(Exception):
    """The model guest kernel cannot go on (where Linux would panic, or spin for ever at one
    instant): the CPU stops that VM and reports the reason; the host and other VMs go on."""


class GuestCpu(Protocol):
    """The architectural interface of one vCPU, as a guest kernel uses it."""

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0) -> tuple[int, int, int, int]:
        """HVC #imm: returns x0..x3 after the call."""
        ...

    def smc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0) -> tuple[int, int, int, int]:
        """SMC #imm: returns x0..x3 after the call."""
        ...

    def mrs(self, reg: SysReg) -> int:
        """Read a system register."""
        ...

    def msr(self, reg: SysReg, value: int) -> None:
        """Write a system register."""
        ...

    def read(self, addr: int, size: int) -> bytes:
        """Read physical memory (the MMU is off in the model)."""
        ...

    def write(self, addr: int, data: bytes) -> None:
        """Write physical memory."""
        ...

    def load64(self, addr: int) -> int:
        """One single-copy-atomic 64-bit little-endian load (LDR Xt)."""
        ...


@dataclass(frozen=True)
class Compute:
    """Execute instructions for `ns` of CPU time (interruptible by IRQs and preemption)."""

    ns: int


@dataclass(frozen=True)
class WaitForInterrupt:
    """WFI: stop until an interrupt is pending."""


@dataclass(frozen=True)
class MmioWrite:
    """A store to device memory: the VMM handles it (an MMIO exit) before the guest goes on."""

    addr: int
    data: bytes


@dataclass(frozen=True)
class MmioRead:
    """A load from device memory: `yield` evaluates to the bytes the VMM supplied."""

    addr: int
    size: int


Action = Compute | WaitForInterrupt | MmioWrite | MmioRead
CpuProgram = Generator[Action, bytes | None, None]


class ModelProgram(Protocol):
    """A guest program for the model CPU: one `main` generator per vCPU, and an IRQ handler."""

    def main(self, cpu: GuestCpu, index: int) -> CpuProgram:
        """The vCPU's code from reset; returning powers the vCPU off (PSCI CPU_OFF)."""
        ...

    def irq(self, cpu: GuestCpu, index: int) -> None:
        """The IRQ exception handler: must acknowledge the timer (reprogram or mask it)."""
        ...
