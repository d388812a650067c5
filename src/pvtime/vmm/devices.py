"""The VMM's MMIO devices on the QEMU `virt` layout: a PL011 UART (output only).

An access that reaches the VMM at an address with neither RAM nor a device is a guest bug: the
VMM stops that VM with a diagnostic naming the PC, the instruction and the access, which it
reads back through the KVM API (ONE_REG PC, which KVM leaves at the access during an MMIO exit)
and its own copy of guest RAM.
"""

from __future__ import annotations

from collections.abc import Callable

from pvtime.abi.uapi import KVM_INTERNAL_ERROR_EMULATION, REG_PC
from pvtime.cpu.disasm import disassemble
from pvtime.kvm import InternalErrorExit, MmioExit, Vcpu
from pvtime.vmm.layout import Layout

PL011_DR = 0x00
PL011_FR = 0x18
PL011_FR_RXFE = 1 << 4  # receive FIFO empty: there is no console input
PL011_FR_TXFE = 1 << 7  # transmit FIFO empty: output is never busy


class Pl011:
    """Output-only PL011: DR writes go to the console; FR says "transmitter idle, nothing to read"."""

    def __init__(self, base: int, size: int, emit: Callable[[bytes], None]) -> None:
        self.base = base
        self.size = size
        self._emit = emit

    def contains(self, addr: int) -> bool:
        """Is `addr` in the UART's register window?"""
        return self.base <= addr < self.base + self.size

    def access(self, ex: MmioExit) -> bytes | None:
        """Serve one access; the data for a read (other registers read as zero, writes ignored)."""
        offset = ex.phys_addr - self.base
        if ex.is_write:
            if offset == PL011_DR:
                self._emit(ex.data[:1])
            return None
        value = PL011_FR_RXFE | PL011_FR_TXFE if offset == PL011_FR else 0
        return value.to_bytes(8, "little")[:ex.len]


def unassigned_access(vcpu: Vcpu, ex: MmioExit, read_guest: Callable[[int, int], bytes | None]) -> InternalErrorExit:
    """The diagnostic for an access to an address with no RAM and no device."""
    pc = vcpu.get_one_reg(REG_PC)
    word = read_guest(pc, 4)
    what = f"store of {ex.len} bytes to" if ex.is_write else f"load of {ex.len} bytes from"
    return InternalErrorExit(KVM_INTERNAL_ERROR_EMULATION, pc, disassemble(word, pc) if word else "",
                             f"{what} {ex.phys_addr:#x}: no RAM and no device there")


def uart_for(layout: Layout, emit: Callable[[bytes], None]) -> Pl011:
    """The machine's UART at its layout address."""
    return Pl011(layout.uart_base, layout.uart_size, emit)
