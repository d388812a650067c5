"""Coalesced MMIO as virt/kvm/coalesced_mmio.c implements it, reached by AArch64 guest code:
stores wholly inside a registered zone go to the VM's ring without an exit while it has room
(coalesced_mmio_write, whose room check Linux 6.12 folded in from coalesced_mmio_has_room),
everything else exits as before; the ioctls' errno (kvm_vm_ioctl_register_coalesced_mmio,
kvm_vm_ioctl_unregister_coalesced_mmio, kvm_io_bus_register_dev)."""

from __future__ import annotations

import struct

import pytest

from pvtime.abi.errno import EINVAL, ENOSPC
from pvtime.abi.records import COALESCED_RING_ENTRY, COALESCED_RING_HEADER
from pvtime.abi.uapi import (
    KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO, KVM_COALESCED_MMIO_MAX, KVM_COALESCED_MMIO_PAGE_OFFSET,
    NR_IOBUS_DEVS,
)
from pvtime.kvm import KvmError, MmioExit
from pvtime.vmm.coalesced import drain
from tests.cpu.asm import assemble
from tests.cpu.rig import Rig

DEV = 0x0900_0000


def stores(count: int, *, offset: int = 0, size: str = "w") -> Rig:
    """A guest that stores 1, 2, ... `count` to DEV + `offset` (32-bit, or 64-bit with size "x"),
    then loads from DEV and stops in WFI."""
    return Rig(assemble(f"""
        mov x1, #{DEV:#x}
        mov x2, #0
    1:  add x2, x2, #1
        str {size}2, [x1, #{offset}]
        cmp x2, #{count}
        b.ne 1b
        ldr w3, [x1]
        wfi
    """))


def ring_header(rig: Rig) -> tuple[int, int]:
    return COALESCED_RING_HEADER.unpack_from(rig.vcpus[0].coalesced_mmio_ring(), 0)


def test_capability_answers_the_ring_page_offset():
    """kvm_vm_ioctl_check_extension_generic: KVM_CAP_COALESCED_MMIO is the page offset of the ring
    in a vCPU's mmap (1 on arm64); coalesced port I/O is supported."""
    rig = Rig(assemble("wfi"))
    assert rig.vm.check_extension(KVM_CAP_COALESCED_MMIO) == KVM_COALESCED_MMIO_PAGE_OFFSET == 1
    assert rig.vm.check_extension(KVM_CAP_COALESCED_PIO) == 1
    assert KVM_COALESCED_MMIO_MAX == 170  # (4096 - 8) / 24


def test_stores_in_a_zone_complete_without_exits_in_order():
    rig = stores(5)
    rig.vm.register_coalesced_mmio(DEV, 4)
    ex = rig.run()
    assert ex == MmioExit(DEV, 4, b"", False)  # the load still exits
    assert ring_header(rig) == (0, 5)
    ring = rig.vcpus[0].coalesced_mmio_ring()
    entry = COALESCED_RING_ENTRY.unpack_from(ring, COALESCED_RING_HEADER.size)
    assert entry == (DEV, 4, 0, struct.pack("<I", 1) + bytes(4))
    assert drain(ring) == [(DEV, struct.pack("<I", i)) for i in range(1, 6)]
    assert ring_header(rig) == (5, 5)  # the VMM moved `first` up to `last`
    assert rig.vcpus[0].stats.runs == 1


def test_without_a_zone_every_store_exits():
    rig = stores(3)
    exits = [rig.run() for _ in range(4)]
    assert exits == [MmioExit(DEV, 4, struct.pack("<I", i), True) for i in (1, 2, 3)] + [MmioExit(DEV, 4, b"", False)]
    assert ring_header(rig) == (0, 0)


def test_a_store_reaching_outside_the_zone_exits():
    """coalesced_mmio_in_range: the whole access must lie in the zone; an 8-byte store to a 4-byte
    zone exits."""
    rig = stores(1, size="x")
    rig.vm.register_coalesced_mmio(DEV, 4)
    assert rig.run() == MmioExit(DEV, 8, struct.pack("<Q", 1), True)
    assert ring_header(rig) == (0, 0)


def test_a_full_ring_makes_the_store_exit():
    """One entry always stays free: 169 stores fit, the 170th exits; once the VMM drains, stores
    are coalesced again."""
    rig = stores(KVM_COALESCED_MMIO_MAX + 2)
    rig.vm.register_coalesced_mmio(DEV, 4)
    ex = rig.run()
    assert ex == MmioExit(DEV, 4, struct.pack("<I", KVM_COALESCED_MMIO_MAX), True)
    ring = rig.vcpus[0].coalesced_mmio_ring()
    assert ring_header(rig) == (0, KVM_COALESCED_MMIO_MAX - 1)
    assert [d for _, d in drain(ring)] == [struct.pack("<I", i) for i in range(1, KVM_COALESCED_MMIO_MAX)]
    assert rig.run() == MmioExit(DEV, 4, b"", False)  # the last two went to the ring (which wrapped)
    assert [d for _, d in drain(ring)] == [struct.pack("<I", KVM_COALESCED_MMIO_MAX + i) for i in (1, 2)]
    assert ring_header(rig) == (1, 1)


def test_unregister_removes_zones_holding_the_range():
    """kvm_vm_ioctl_unregister_coalesced_mmio removes each zone that holds the whole range given:
    a range larger than the zone removes nothing (and is no error); one inside it removes it."""
    rig = stores(1)
    rig.vm.register_coalesced_mmio(DEV, 4)
    rig.vm.unregister_coalesced_mmio(DEV - 4, 16)
    rig.vm.unregister_coalesced_mmio(DEV, 4, pio=1)  # the port-I/O bus has no such zone
    assert rig.run() == MmioExit(DEV, 4, b"", False)
    rig2 = stores(1)
    rig2.vm.register_coalesced_mmio(DEV, 4)
    rig2.vm.unregister_coalesced_mmio(DEV + 1, 2)
    assert rig2.run() == MmioExit(DEV, 4, struct.pack("<I", 1), True)


def test_pio_must_be_zero_or_one():
    """Both ioctls check the zone's pio first (EINVAL); a refused zone takes no stores."""
    rig = stores(1)
    for call in (rig.vm.register_coalesced_mmio, rig.vm.unregister_coalesced_mmio):
        with pytest.raises(KvmError) as err:
            call(DEV, 4, 2)
        assert err.value.errno == EINVAL
    assert rig.run() == MmioExit(DEV, 4, struct.pack("<I", 1), True)


def test_a_port_io_zone_does_not_take_mmio_stores():
    rig = stores(1)
    rig.vm.register_coalesced_mmio(DEV, 4, pio=1)
    assert rig.run() == MmioExit(DEV, 4, struct.pack("<I", 1), True)


def test_each_bus_holds_at_most_nr_iobus_devs():
    """kvm_io_bus_register_dev: ENOSPC once the zone's own bus holds NR_IOBUS_DEVS devices; zones on
    the port-I/O bus do not count against the MMIO bus."""
    rig = stores(1)
    for i in range(NR_IOBUS_DEVS):
        rig.vm.register_coalesced_mmio(0x1000_0000 + 8 * i, 4, pio=1)
    with pytest.raises(KvmError) as err:
        rig.vm.register_coalesced_mmio(0x2000_0000, 4, pio=1)
    assert err.value.errno == ENOSPC
    for i in range(NR_IOBUS_DEVS - 1):
        rig.vm.register_coalesced_mmio(0x3000_0000 + 8 * i, 4)
    rig.vm.register_coalesced_mmio(DEV, 4)  # the MMIO bus's last place
    with pytest.raises(KvmError) as err:
        rig.vm.register_coalesced_mmio(DEV + 4, 4)
    assert err.value.errno == ENOSPC
    assert rig.run() == MmioExit(DEV, 4, b"", False)  # the store went to the ring all the same
    assert ring_header(rig) == (0, 1)


def test_an_entry_gets_only_the_stores_bytes():
    """coalesced_mmio_write copies `len` bytes of data: the rest of the entry keeps what was there."""
    from pvtime.kvm.coalesced_mmio import CoalescedMmio

    kvm = CoalescedMmio()
    data_at = COALESCED_RING_HEADER.size + COALESCED_RING_ENTRY.size - 8  # entry 0's data
    kvm.ring[data_at:data_at + 8] = b"\xaa" * 8
    kvm.register(DEV, 8, 0, 0)
    assert kvm.write(DEV, b"\x01")
    assert bytes(kvm.ring[data_at:data_at + 8]) == b"\x01" + b"\xaa" * 7
    assert drain(kvm.ring) == [(DEV, b"\x01")]


def test_a_corrupted_ring_header_is_refused_by_the_vmm():
    ring = bytearray(4096)
    COALESCED_RING_HEADER.pack_into(ring, 0, 0, KVM_COALESCED_MMIO_MAX)
    with pytest.raises(ValueError, match="last 170"):
        drain(ring)
