"""The unicorn backend sees the accesses its engine refuses over exactly the addresses no memslot
backs, and the slots a write faults in: an MMIO exit at the first and last byte around RAM, at
address 0 and high in the physical address space, where a slot was removed, and a write to a
read-only slot added after the first run (KVM: arch/arm64/kvm/mmu.c, kvm_handle_guest_abort -> io_mem_abort
for an address no memslot backs or a write to a read-only one)."""

from __future__ import annotations

from pvtime.abi.uapi import KVM_MEM_READONLY, reg_x
from pvtime.kvm import HaltExit, MmioExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig

RAM_SIZE = 1 << 20
SLOT_BASE = 0x4020_0000  # a second slot, apart from RAM
HIGH = 0xFF_FFFF_F000  # below the A72's 44-bit physical address range


def test_mmio_exits_where_no_slot_backs_the_address_and_as_slots_come_and_go() -> None:
    rig = Rig(assemble("""
        ldrb w10, [x1]
        ldrb w10, [x2]
        ldrb w10, [x3]
        ldr w10, [x4]
        ldr w11, [x5]
        ldrb w10, [x1]
        ldr w12, [x5]
        str w11, [x6]
        wfi
    """), ram_size=RAM_SIZE)
    vcpu = rig.vcpus[0]
    slot = bytearray(0x1000)
    slot[:4] = (0xC0FFEE).to_bytes(4, "little")
    rig.vm.set_user_memory_region(1, SLOT_BASE, len(slot), slot)
    for n, value in enumerate((0, RAM_BASE - 1, RAM_BASE + RAM_SIZE, HIGH, SLOT_BASE, RAM_BASE + 0x800), start=1):
        vcpu.set_one_reg(reg_x(n), value)
    for address in (0, RAM_BASE - 1, RAM_BASE + RAM_SIZE):
        assert rig.run() == MmioExit(address, 1, b"", False)
        vcpu.complete_mmio(b"\0")
    assert rig.run() == MmioExit(HIGH, 4, b"", False)
    vcpu.complete_mmio(bytes(4))
    assert rig.run() == MmioExit(0, 1, b"", False)  # the slot's word was read without an exit
    assert vcpu.get_one_reg(reg_x(11)) == 0xC0FFEE
    rig.vm.set_user_memory_region(1, SLOT_BASE, 0, None)  # removed: its addresses are MMIO now
    vcpu.complete_mmio(b"\0")
    assert rig.run() == MmioExit(SLOT_BASE, 4, b"", False)
    vcpu.complete_mmio(bytes(4))
    assert isinstance(rig.run(), HaltExit)  # the store went to RAM, without an exit
    assert rig.ram[0x800:0x804] == (0xC0FFEE).to_bytes(4, "little")


def test_a_write_to_a_read_only_slot_added_after_the_first_run_exits() -> None:
    rig = Rig(assemble("""
        ldrb w10, [x1]
        ldr w11, [x2]
        str w11, [x2, #4]
        wfi
    """), ram_size=RAM_SIZE)
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(reg_x(1), 0)
    vcpu.set_one_reg(reg_x(2), SLOT_BASE)
    assert rig.run() == MmioExit(0, 1, b"", False)
    flash = bytearray(0x1000)
    flash[:4] = (0x1234_5678).to_bytes(4, "little")
    rig.vm.set_user_memory_region(1, SLOT_BASE, len(flash), flash, KVM_MEM_READONLY)
    vcpu.complete_mmio(b"\0")
    assert rig.run() == MmioExit(SLOT_BASE + 4, 4, (0x1234_5678).to_bytes(4, "little"), True)
    assert flash[4:8] == bytes(4)
    assert isinstance(rig.run(), HaltExit)
