"""Coalesced MMIO (virt/kvm/coalesced_mmio.c): stores to registered zones complete in KVM, which
records them in a ring the VMM reads later, instead of exiting to the VMM for each one.

A VMM registers a zone over device registers whose writes it need not see at once (a UART's data
register while its transmit interrupt is masked) and drains the ring before it handles any exit,
so the device still sees every store, in order. A store is coalesced only when it lies wholly in a
zone and the ring has room (one entry always stays free); otherwise it exits as usual. Loads always
exit. The ring is the VM's, one page (`pvtime.abi.records.COALESCED_RING_*`), which a VMM maps
through any of its vCPUs at KVM_COALESCED_MMIO_PAGE_OFFSET.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pvtime.abi.errno import EINVAL, ENOSPC
from pvtime.abi.records import COALESCED_RING_ENTRY, COALESCED_RING_HEADER
from pvtime.abi.uapi import KVM_COALESCED_MMIO_MAX, NR_IOBUS_DEVS, PAGE_SIZE
from pvtime.abi.widths import U64
from pvtime.kvm.errors import KvmError

_ENTRY_HEAD = struct.Struct("<QII")  # an entry up to its data: phys_addr, len, pio
assert _ENTRY_HEAD.size + 8 == COALESCED_RING_ENTRY.size


@dataclass(frozen=True)
class Zone:
    """struct kvm_coalesced_mmio_zone: `size` bytes at `addr` on the MMIO bus (`pio` 0) or the
    port-I/O bus (`pio` 1, which arm64 guests never reach)."""

    addr: int
    size: int
    pio: int

    def holds(self, addr: int, length: int) -> bool:
        """coalesced_mmio_in_range: is [addr, addr + length) wholly inside the zone?"""
        if length < 0 or addr + length > U64:
            return False
        return self.addr <= addr and addr + length <= self.addr + self.size


class CoalescedMmio:
    """The VM's zones and ring (kvm->coalesced_zones, kvm->coalesced_mmio_ring)."""

    def __init__(self) -> None:
        self.zones: list[Zone] = []
        self.ring = bytearray(PAGE_SIZE)  # the page the VMM maps

    def register(self, addr: int, size: int, pio: int, mmio_devices: int) -> None:
        """kvm_vm_ioctl_register_coalesced_mmio: EINVAL for a `pio` other than 0 or 1, ENOSPC when
        the zone's bus (MMIO or port I/O) already holds NR_IOBUS_DEVS devices (`mmio_devices`:
        the in-kernel devices on the MMIO bus)."""
        _check_pio(pio)
        on_bus = sum(1 for z in self.zones if z.pio == pio) + (0 if pio else mmio_devices)
        if on_bus > NR_IOBUS_DEVS - 1:  # kvm_io_bus_register_dev
            raise KvmError(ENOSPC, f"coalesced MMIO zone {addr:#x}+{size:#x}: the bus already has "
                                   f"{NR_IOBUS_DEVS} devices, its limit")
        self.zones.append(Zone(addr, size, pio))

    def unregister(self, addr: int, size: int, pio: int) -> None:
        """kvm_vm_ioctl_unregister_coalesced_mmio: removes every zone on that bus that holds the
        whole range given (none is no error); EINVAL for a `pio` other than 0 or 1."""
        _check_pio(pio)
        self.zones = [z for z in self.zones if not (z.pio == pio and z.holds(addr, size))]

    def write(self, addr: int, data: bytes) -> bool:
        """coalesced_mmio_write, for a guest store on the MMIO bus: True when a zone took it into
        the ring; False when no zone holds it or the ring is full, or `last` is out of range (the
        store then exits). The entry's data gets the store's bytes; the rest of it is left as it was."""
        zone = next((z for z in self.zones if z.pio == 0 and z.holds(addr, len(data))), None)
        if zone is None:
            return False
        first, last = COALESCED_RING_HEADER.unpack_from(self.ring, 0)
        if last >= KVM_COALESCED_MMIO_MAX or (last + 1) % KVM_COALESCED_MMIO_MAX == first:
            return False
        offset = COALESCED_RING_HEADER.size + last * COALESCED_RING_ENTRY.size
        _ENTRY_HEAD.pack_into(self.ring, offset, addr, len(data), zone.pio)
        self.ring[offset + _ENTRY_HEAD.size:offset + _ENTRY_HEAD.size + len(data)] = data  # len bytes, as memcpy
        struct.pack_into("<I", self.ring, 4, (last + 1) % KVM_COALESCED_MMIO_MAX)
        return True


def _check_pio(pio: int) -> None:
    if pio not in (0, 1):
        raise KvmError(EINVAL, f"coalesced MMIO zone: pio must be 0 or 1, got {pio}")
