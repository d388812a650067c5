"""Stage 1 page tables for test guests, as Linux arm64 uses them: 4 KiB granule, 48-bit VAs.

`build_tables(ram)` writes, at TABLES in the rig's RAM, tables shared by TTBR0_EL1 and TTBR1_EL1:

- VA 0x0000_0000..0x3FFF_FFFF -> the same PA, Device-nGnRnE (a level 1 block: the UART is there);
- VA 0x4000_0000..0x401F_FFFF -> the same PA, 4 KiB pages of normal memory (level 3), the first
  `code_pages` read-only at EL1 and EL0 (code EL0 may run), the others EL1 read/write only;
- VA 0x8000_0000 and up (to 1 TiB): nothing (a level 1 translation fault);
- the same again at HIGH + VA (TTBR1_EL1: the upper 16 bits set).

`MMU_ON` is the assembly that turns the MMU on with them (clobbers x1, x2); `MMU_ON_HIGH` goes on
at the HIGH alias of the code, so that the PC is a virtual address that is no physical one.
"""

from __future__ import annotations

import struct

from tests.cpu.rig import RAM_BASE

HIGH = 0xFFFF_0000_0000_0000
TABLES = 0x1_0000  # offset in RAM of the level 0 table; level 1, 2, 3 follow, a page each
_L0, _L1, _L2, _L3 = (TABLES + 0x1000 * i for i in range(4))

VALID_TABLE = 0b11
VALID_PAGE = 0b11
VALID_BLOCK = 0b01
AF = 1 << 10
SH_INNER = 3 << 8
AP_EL0 = 1 << 6  # AP[1]: EL0 may access
AP_RO = 1 << 7  # AP[2]: read-only
ATTR_DEVICE = 1 << 2  # MAIR attribute 1


def page(pa: int, *, readonly: bool = False, el0: bool = False) -> int:
    """A level 3 descriptor of normal memory at `pa`."""
    return pa | AF | SH_INNER | VALID_PAGE | (AP_RO if readonly else 0) | (AP_EL0 if el0 else 0)


def pte_offset(va: int) -> int:
    """The offset in RAM of the level 3 entry that maps `va` (in 0x4000_0000..0x401F_FFFF)."""
    index = (va & ~HIGH) - RAM_BASE >> 12
    assert 0 <= index < 512, hex(va)
    return _L3 + 8 * index


def build_tables(ram: bytearray, *, code_pages: int = 4) -> None:
    """Write the tables (see the module docstring) into the rig's RAM (at least TABLES + 16 KiB)."""
    def put(offset: int, value: int) -> None:
        struct.pack_into("<Q", ram, offset, value)

    put(_L0, RAM_BASE + _L1 | VALID_TABLE)
    put(_L1, 0 | AF | ATTR_DEVICE | VALID_BLOCK)
    put(_L1 + 8, RAM_BASE + _L2 | VALID_TABLE)
    put(_L2, RAM_BASE + _L3 | VALID_TABLE)
    for i in range(512):
        ro = i < code_pages
        put(_L3 + 8 * i, page(RAM_BASE + 0x1000 * i, readonly=ro, el0=ro))


# MAIR_EL1: attribute 0 normal write-back, attribute 1 Device-nGnRnE. TCR_EL1: T0SZ = T1SZ = 16
# (48-bit VAs), 4 KiB granules (TG0 0, TG1 0b10), inner-shareable write-back walks, IPS 48 bits.
MMU_ON = f"""
        movz x1, #{(RAM_BASE + TABLES) >> 16:#x}, lsl #16
        msr ttbr0_el1, x1
        msr ttbr1_el1, x1
        mov x1, #0xff
        msr mair_el1, x1
        movz x1, #0x3510
        movk x1, #0xb510, lsl #16
        movk x1, #0x5, lsl #32
        msr tcr_el1, x1
        isb
        mrs x1, sctlr_el1
        orr x1, x1, #1
        msr sctlr_el1, x1
        isb
"""

MMU_ON_HIGH = MMU_ON + """
        adr x1, 9f
        movz x2, #0xffff, lsl #48
        orr x1, x1, x2
        br x1
9:
"""
