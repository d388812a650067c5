"""The VMM's use of KVM's coalesced MMIO: the UART's data register as a zone while its transmit
interrupt is masked.

Each character Linux prints through the PL011 costs two accesses: a load of FR (is there room?)
and a store to DR. A coalesced store completes in KVM without an exit (`pvtime.kvm.coalesced_mmio`)
and waits in the ring until the VMM drains it, which it does before it handles any exit -- so the
UART sees every store, in order, before any later access. That is exact only while a DR store has
no effect a guest could see between two exits: with the transmit interrupt masked, its one other
effect (the raw TX status bit) can be read only through an access that exits, and is drained
first. When the guest unmasks the interrupt (an IMSC store, which exits), the zone goes; when it
masks it again, the zone comes back. QEMU drains before an access to a region with coalescing
(prepare_mmio_access, kvm_flush_coalesced_mmio_buffer); draining before every exit is stricter, and
also keeps the UART's output in order with semihosting output.
"""

from __future__ import annotations

import struct

from pvtime.abi.records import COALESCED_RING_ENTRY, COALESCED_RING_HEADER
from pvtime.abi.uapi import KVM_COALESCED_MMIO_MAX
from pvtime.kvm import MmioExit, Vcpu, Vm
from pvtime.vmm.devices import PL011_DR, PL011_INT_TX, Pl011

DR_ZONE_SIZE = 4  # Linux writes DR with a 16- or 32-bit store


def drain(ring: bytearray) -> list[tuple[int, bytes]]:
    """The stores in the ring since the last drain, oldest first, as (address, data); marks them
    read (`first` moves up to `last`). ValueError for a header no KVM writes."""
    first, last = COALESCED_RING_HEADER.unpack_from(ring, 0)
    if first >= KVM_COALESCED_MMIO_MAX or last >= KVM_COALESCED_MMIO_MAX:
        raise ValueError(f"coalesced MMIO ring: first {first}, last {last}: both must be below "
                         f"{KVM_COALESCED_MMIO_MAX}")
    out = []
    while first != last:
        addr, length, _pio, data = COALESCED_RING_ENTRY.unpack_from(
            ring, COALESCED_RING_HEADER.size + first * COALESCED_RING_ENTRY.size)
        out.append((addr, data[:min(length, len(data))]))
        first = (first + 1) % KVM_COALESCED_MMIO_MAX
    struct.pack_into("<I", ring, 0, first)
    return out


class CoalescedUart:
    """Keeps the DR zone registered exactly while the UART's TX interrupt is masked, and hands the
    coalesced stores to the UART."""

    def __init__(self, vm: Vm, vcpu: Vcpu, uart: Pl011) -> None:
        self._vm = vm
        self._ring = vcpu.coalesced_mmio_ring()
        self._uart = uart
        self.registered = False  # is the DR zone registered now?
        self.sync()

    def sync(self) -> None:
        """Register or unregister the zone as the UART's interrupt mask now says."""
        wanted = not self._uart.mask & PL011_INT_TX
        if wanted == self.registered:
            return
        if wanted:
            self._vm.register_coalesced_mmio(self._uart.base + PL011_DR, DR_ZONE_SIZE)
        else:
            self._vm.unregister_coalesced_mmio(self._uart.base + PL011_DR, DR_ZONE_SIZE)
        self.registered = wanted

    def flush(self) -> None:
        """Give the UART the stores waiting in the ring (before the VMM handles an exit)."""
        if self._ring[0:4] == self._ring[4:8]:  # first == last: nothing waits (the common case)
            return
        for addr, data in drain(self._ring):
            self._uart.access(MmioExit(addr, len(data), data, True))
