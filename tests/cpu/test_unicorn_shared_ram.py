"""vCPUs share RAM, each with an engine of its own that caches translations (TLB) and translated
code: a TLBI or IC on one must reach the others, as the broadcast maintenance does that Linux
relies on (`flush_tlb_page` -> `__tlbi(vale1is)` in arch/arm64/include/asm/tlbflush.h;
`caches_clean_inval_pou` -> `ic ivau` in arch/arm64/mm/cache.S, after patching kernel text).
"""

from __future__ import annotations

import pytest

from pvtime.abi.uapi import REG_PC, reg_x
from pvtime.kvm import HaltExit, IntrExit
from tests.cpu.asm import assemble
from tests.cpu.mmu import MMU_ON, build_tables, page, pte_offset
from tests.cpu.rig import RAM_BASE, Rig

FLAG = RAM_BASE + 0xF_0000  # vCPU 1 sets it when it is done
SECOND = 0x1000  # where vCPU 1's code is, in RAM

# vCPU 0: x10 = f(), wait for the flag, x11 = f(); f is given in x5 as a load or a call.
WAIT_AND_AGAIN = f"""
        {{first}}
        movz x6, #{FLAG >> 16:#x}, lsl #16
    1:  ldr x7, [x6]
        cbz x7, 1b
        {{second}}
        wfi
"""
SIGNAL = f"""
        movz x6, #{FLAG >> 16:#x}, lsl #16
        mov x7, #1
        str x7, [x6]
        wfi
"""


def _two_vcpus(first: str, second: str) -> Rig:
    rig = Rig(assemble(first), vcpus=2, ram_size=2 << 20)
    code = assemble(second)
    rig.ram[SECOND:SECOND + len(code)] = code
    rig.vcpus[1].init()
    rig.vcpus[1].set_one_reg(REG_PC, RAM_BASE + SECOND)
    return rig


def _run_in_turn(rig: Rig) -> None:
    """vCPU 0 until it waits, vCPU 1 to its end, vCPU 0 to its end."""
    assert rig.run(0, budget_ns=200_000) == IntrExit()
    assert isinstance(rig.run(1), HaltExit)
    assert isinstance(rig.run(0), HaltExit)


def test_a_tlbi_on_one_vcpu_drops_the_translation_another_cached() -> None:
    va = RAM_BASE + 0x10_0000
    rig = _two_vcpus(MMU_ON + WAIT_AND_AGAIN.format(first="ldr x10, [x5]", second="ldr x11, [x5]"), """
        str x2, [x1]
        dsb ishst
        tlbi vae1is, x3
        dsb ish
        isb
    """ + SIGNAL)
    build_tables(rig.ram)
    rig.ram[0x10_0000:0x10_0008] = (0xAAAA).to_bytes(8, "little")
    rig.ram[0x10_1000:0x10_1008] = (0xBBBB).to_bytes(8, "little")
    v0, v1 = rig.vcpus
    v0.set_one_reg(reg_x(5), va)
    # vCPU 1 (MMU off) points the page at the next one and invalidates the old translation.
    v1.set_one_reg(reg_x(1), RAM_BASE + pte_offset(va))
    v1.set_one_reg(reg_x(2), page(RAM_BASE + 0x10_1000))
    v1.set_one_reg(reg_x(3), va >> 12)
    _run_in_turn(rig)
    assert (v0.get_one_reg(reg_x(10)), v0.get_one_reg(reg_x(11))) == (0xAAAA, 0xBBBB)


@pytest.mark.parametrize("invalidate", ["ic ivau, x1", "ic ialluis"])
def test_an_ic_on_one_vcpu_drops_the_code_another_translated(invalidate: str) -> None:
    function = RAM_BASE + 0x2000
    rig = _two_vcpus(WAIT_AND_AGAIN.format(first="blr x5\n mov x10, x0", second="blr x5\n mov x11, x0"), f"""
        str w2, [x1]
        dc cvau, x1
        dsb ish
        {invalidate}
        dsb ish
        isb
    """ + SIGNAL)
    code = assemble("mov x0, #1\n ret")
    rig.ram[0x2000:0x2000 + len(code)] = code
    v0, v1 = rig.vcpus
    v0.set_one_reg(reg_x(5), function)
    # vCPU 1 rewrites the function's first instruction.
    v1.set_one_reg(reg_x(1), function)
    v1.set_one_reg(reg_x(2), int.from_bytes(assemble("mov x0, #2"), "little"))
    _run_in_turn(rig)
    assert (v0.get_one_reg(reg_x(10)), v0.get_one_reg(reg_x(11))) == (1, 2)
