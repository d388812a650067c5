"""With the MMU on, the PC is a virtual address: WFI detection, MMIO decoding (the instruction
behind an MMIO exit, as KVM decodes it in io_mem_abort when ESR_EL2.ISV is clear) and the
exception vectors read the instruction through the vCPU's translation, never at the PC taken as
a physical address. Linux runs at 0xffff8000_xxxxxxxx from `__primary_switched` on
(arch/arm64/kernel/head.S).
"""

from __future__ import annotations

from pvtime.abi.uapi import REG_PC, REG_SP_EL1, reg_x
from pvtime.kvm import HaltExit, MmioExit
from tests.cpu.asm import IRQ_VECTORS, assemble
from tests.cpu.mmu import HIGH, MMU_ON_HIGH, build_tables
from tests.cpu.rig import RAM_BASE, Rig

UART = 0x0900_0000


def _rig(source: str) -> Rig:
    rig = Rig(assemble(MMU_ON_HIGH + source), ram_size=2 << 20)
    build_tables(rig.ram)
    return rig


def test_wfi_at_a_virtual_pc_halts() -> None:
    rig = _rig("mov x0, #5\n wfi\n mov x0, #6")
    assert rig.run() == HaltExit(None)
    assert rig.vcpus[0].get_one_reg(REG_PC) >> 48 == 0xFFFF  # past the WFI, at its virtual address
    assert rig.vcpus[0].get_one_reg(reg_x(0)) == 5


def test_mmio_at_a_virtual_pc_and_address_exits_with_the_physical_address() -> None:
    rig = _rig(f"""
        movz x1, #{UART >> 16:#x}, lsl #16
        movk x1, #0xffff, lsl #48
        ldr w2, [x1, #0x18]
        mov w3, #0x41
        strb w3, [x1]
        wfi
    """)
    vcpu = rig.vcpus[0]
    assert rig.run() == MmioExit(UART + 0x18, 4, b"", False)
    assert vcpu.get_one_reg(REG_PC) >> 48 == 0xFFFF  # at the load, a virtual address
    vcpu.complete_mmio(b"\x90\0\0\0")
    assert rig.run() == MmioExit(UART, 1, b"A", True)
    assert vcpu.get_one_reg(reg_x(2)) == 0x90
    assert isinstance(rig.run(), HaltExit)


def test_an_interrupt_is_taken_to_a_virtual_vbar() -> None:
    rig = _rig("""
        adr x1, vectors
        msr vbar_el1, x1
        msr cntv_cval_el0, xzr
        mov x3, #1
        msr cntv_ctl_el0, x3
        msr daifclr, #2
    1:  b 1b
    """ + IRQ_VECTORS + """
        mrs x10, elr_el1     /* current EL, SPx, IRQ */
        msr cntv_ctl_el0, xzr
        wfi
    """)
    rig.vcpus[0].set_one_reg(REG_SP_EL1, HIGH | RAM_BASE + 0x8_0000)
    assert isinstance(rig.run(), HaltExit)
    elr = rig.vcpus[0].get_one_reg(reg_x(10))
    assert elr >> 48 == 0xFFFF and RAM_BASE <= elr & ~HIGH < RAM_BASE + 0x1000
