"""The VMM's MMIO devices on the QEMU `virt` layout: a PL011 UART (output only, with its interrupt).

An access that reaches the VMM at an address with neither RAM nor a device is a guest bug: the
VMM stops that VM with a diagnostic naming the PC, the instruction and the access, which it
reads back through the KVM API (ONE_REG PC, which KVM leaves at the access during an MMIO exit)
and its own copy of guest RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pvtime.abi.uapi import KVM_INTERNAL_ERROR_EMULATION, REG_PC
from pvtime.cpu.disasm import disassemble
from pvtime.kvm import InternalErrorExit, MmioExit, Vcpu
from pvtime.vmm.layout import Layout

PL011_DR = 0x00
PL011_FR = 0x18
PL011_IMSC = 0x38
PL011_RIS = 0x3C
PL011_MIS = 0x40
PL011_ICR = 0x44
PL011_FR_RXFE = 1 << 4  # receive FIFO empty: there is no console input
PL011_FR_TXFE = 1 << 7  # transmit FIFO empty: output is never busy
PL011_INT_TX = 1 << 5  # UARTTXINTR: the transmit FIFO is at or below its trigger level
PL011_INT_MASK = 0x7FF
# PrimeCell identification (offsets 0xFE0-0xFFC, one byte per word): PL011 r1p5 and the PrimeCell
# id 0xB105F00D, which Linux's AMBA bus reads to bind the driver (amba_read_periphid).
PL011_ID = bytes((0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1))
PL011_ID_BASE = 0xFE0
_RW_REGS = (0x24, 0x28, 0x2C, 0x30, 0x34, 0x48)  # IBRD FBRD LCR_H CR IFLS DMACR: kept, no effect


class Pl011:
    """A PL011 whose transmitter is always idle: DR writes go to the console, nothing is ever
    received. Linux's amba-pl011 driver finds it by its PrimeCell ids and sends through its
    transmit interrupt: a DR write leaves the FIFO empty (TX raised, as QEMU's pl011 does), ICR
    clears it, IMSC masks it, and `irq` (when the VM has an interrupt controller) gets the level of
    UARTINTR whenever it changes.
    """

    def __init__(self, base: int, size: int, emit: Callable[[bytes], None],
                 irq: Callable[[bool], None] | None = None) -> None:
        self.base = base
        self.size = size
        self._emit = emit
        self.irq = irq
        self.raw = 0  # UARTRIS
        self.mask = 0  # UARTIMSC
        self.regs: dict[int, int] = dict.fromkeys(_RW_REGS, 0)
        self._level = False

    def contains(self, addr: int) -> bool:
        """Is `addr` in the UART's register window?"""
        return self.base <= addr < self.base + self.size

    def access(self, ex: MmioExit) -> bytes | None:
        """Serve one access; the data for a read (unknown registers read as zero, writes ignored)."""
        offset = ex.phys_addr - self.base
        if ex.is_write:
            value = int.from_bytes(ex.data[:ex.len], "little")
            if offset == PL011_DR:
                self._emit(ex.data[:1])
                self.raw |= PL011_INT_TX
            elif offset == PL011_IMSC:
                self.mask = value & PL011_INT_MASK
            elif offset == PL011_ICR:
                self.raw &= ~value
            elif offset in self.regs:
                self.regs[offset] = value & 0xFFFF
            self._update()
            return None
        return self._read(offset).to_bytes(8, "little")[:ex.len]

    def save_state(self) -> dict[str, Any]:
        """The registers a migration carries (JSON-friendly)."""
        return {"raw": self.raw, "mask": self.mask, "regs": {f"{off:#x}": v for off, v in sorted(self.regs.items())}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Put saved registers back, then drive the interrupt line as they say; ValueError names a
        register this UART does not have."""
        for key, value in state["regs"].items():
            off = int(key, 16)
            if off not in self.regs:
                raise ValueError(f"PL011 register {key}: not one the UART keeps")
            self.regs[off] = int(value)
        self.raw, self.mask = int(state["raw"]) & PL011_INT_MASK, int(state["mask"]) & PL011_INT_MASK
        self._update()

    def _read(self, offset: int) -> int:
        if offset == PL011_FR:
            return PL011_FR_RXFE | PL011_FR_TXFE
        if offset == PL011_IMSC:
            return self.mask
        if offset == PL011_RIS:
            return self.raw
        if offset == PL011_MIS:
            return self.raw & self.mask
        if PL011_ID_BASE <= offset < PL011_ID_BASE + 4 * len(PL011_ID) and offset % 4 == 0:
            return PL011_ID[(offset - PL011_ID_BASE) // 4]
        return self.regs.get(offset, 0)

    def _update(self) -> None:
        level = bool(self.raw & self.mask)
        if level != self._level:
            self._level = level
            if self.irq is not None:
                self.irq(level)


def unassigned_access(vcpu: Vcpu, ex: MmioExit, read_guest: Callable[[int, int], bytes | None]) -> InternalErrorExit:
    """The diagnostic for an access to an address with no RAM and no device."""
    pc = vcpu.get_one_reg(REG_PC)
    word = read_guest(pc, 4)
    what = f"store of {ex.len} bytes to" if ex.is_write else f"load of {ex.len} bytes from"
    return InternalErrorExit(KVM_INTERNAL_ERROR_EMULATION, pc, disassemble(word, pc) if word else "",
                             f"{what} {ex.phys_addr:#x}: no RAM and no device there")


def uart_for(layout: Layout, emit: Callable[[bytes], None], irq: Callable[[bool], None] | None = None) -> Pl011:
    """The machine's UART at its layout address; `irq` gets its interrupt level (None: not wired)."""
    return Pl011(layout.uart_base, layout.uart_size, emit, irq)
