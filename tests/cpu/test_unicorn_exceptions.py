"""Synchronous exceptions the guest takes itself (SVC, BRK, undefined instructions, aborts from its
MMU), entered at EL1 as AArch64.TakeException does, with the ESR and FAR the Arm ARM gives; and
EL1 being AArch64 (HCR_EL2.RW), which an ERET to EL1 and the EL1&0 translation regime need.

Linux takes every one of these: `el0t_64_sync_handler` / `el1h_64_sync_handler`
(arch/arm64/kernel/entry-common.c) dispatch on ESR_EL1.EC, `do_mem_abort` (arch/arm64/mm/fault.c)
reads the DFSC, WnR and FAR_EL1.
"""

from __future__ import annotations

import pytest

from pvtime.abi.uapi import REG_PC, REG_PSTATE, REG_SP_EL1, reg_x
from pvtime.cpu.unicorn import syndrome
from pvtime.cpu.unicorn.syndrome import calibrate
from pvtime.kvm import HaltExit, InternalErrorExit
from tests.cpu.asm import assemble
from tests.cpu.mmu import MMU_ON, build_tables, pte_offset
from tests.cpu.rig import RAM_BASE, Rig

# A vector table whose every entry records which one it is (x20 = its offset), ESR_EL1 (x21),
# ELR_EL1 (x22), SPSR_EL1 (x23), FAR_EL1 (x24) and SP (x25), then halts.
VECTORS = "        .balign 0x800\n    vectors:\n" + "".join(f"""
        .balign 0x80
        mov x20, #{offset:#x}
        b record""" for offset in range(0, 0x800, 0x80)) + """
        .balign 0x80
    record:
        mrs x21, esr_el1
        mrs x22, elr_el1
        mrs x23, spsr_el1
        mrs x24, far_el1
        mov x25, sp
        wfi
"""
SET_VBAR = """
        adr x1, vectors
        msr vbar_el1, x1
"""
TO_EL0 = """
        adr x1, el0
        msr elr_el1, x1
        msr spsr_el1, xzr
        eret
    el0:
"""


def _run(source: str, *, mmu: bool = False) -> tuple[Rig, dict[str, int]]:
    """Run `source` (at EL1h, after SET_VBAR) to its halt in the vector table."""
    rig = Rig(assemble(SET_VBAR + (MMU_ON if mmu else "") + source + VECTORS), ram_size=2 << 20)
    if mmu:
        build_tables(rig.ram)
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(REG_SP_EL1, RAM_BASE + 0x8_0000)
    ex = rig.run()
    assert isinstance(ex, HaltExit), ex
    names = {20: "vector", 21: "esr", 22: "elr", 23: "spsr", 24: "far", 25: "sp"}
    return rig, {name: vcpu.get_one_reg(reg_x(n)) for n, name in names.items()}


def _address_of(rig: Rig, word: int) -> int:
    """The guest address of the first instruction `word` in the rig's program."""
    return RAM_BASE + bytes(rig.ram).index(word.to_bytes(4, "little"))


def test_this_unicorn_exposes_the_exception_record() -> None:
    """The spike's decision (pvtime.cpu.unicorn.exceptions): the syndrome and fault address are
    read where calibration finds them, and it finds them in the pinned unicorn."""
    layout = calibrate()
    assert layout is not None
    assert layout.vaddress != layout.syndrome


def test_svc_from_el1h_is_taken_to_the_current_el_spx_vector() -> None:
    rig, got = _run("svc #0x42\n")
    svc = _address_of(rig, 0xD400_0841)
    assert got["vector"] == 0x200
    assert got["esr"] == 0x15 << 26 | 1 << 25 | 0x42  # EC 0x15 (SVC from AArch64), IL, imm16
    assert got["elr"] == svc + 4  # the preferred return address of an SVC is the next instruction
    assert got["spsr"] == 0x3C5  # EL1h, DAIF as they were
    assert got["sp"] == RAM_BASE + 0x8_0000
    assert rig.vcpus[0].get_one_reg(REG_PSTATE) & 0x3CF == 0x3C5  # EL1h, DAIF masked


def test_svc_from_el1t_uses_the_sp_el0_vector() -> None:
    _, got = _run("msr spsel, #0\n svc #1\n")
    assert got["vector"] == 0x000 and got["spsr"] & 0xF == 0b0100
    assert got["sp"] == RAM_BASE + 0x8_0000  # the handler runs on SP_EL1


def test_svc_from_el0_uses_the_lower_el_vector() -> None:
    rig, got = _run(TO_EL0 + "svc #7\n")
    assert got["vector"] == 0x400
    assert got["esr"] == 0x5600_0007
    assert got["elr"] == _address_of(rig, 0xD400_00E1) + 4
    assert got["spsr"] & 0xF == 0  # EL0t


@pytest.mark.parametrize(("source", "word", "esr"), [
    ("brk #0x99", 0xD420_1320, 0xF200_0099),  # EC 0x3C, the comment in the ISS
    ("udf #0", 0x0000_0000, 0x0200_0000),  # EC 0 (unknown reason), IL
    ("mrs x0, s3_0_c15_c15_0", 0xD538_FF00, 0x0200_0000),  # an unallocated register: UNDEFINED
])
def test_brk_and_undefined_instructions_return_to_themselves(source: str, word: int, esr: int) -> None:
    rig, got = _run(source + "\n")
    assert got["vector"] == 0x200 and got["esr"] == esr
    assert got["elr"] == _address_of(rig, word)  # preferred return: the instruction itself


def test_el0_access_to_an_el1_register_traps_with_the_system_register_syndrome() -> None:
    """An EL0 MRS of CNTVCT_EL0 that CNTKCTL_EL1 does not enable: EC 0x18 with the encoding."""
    rig, got = _run(TO_EL0 + "mrs x7, cntvct_el0\n")
    assert got["vector"] == 0x400
    # EC 0x18, IL, op0 3, op2 2, op1 3, CRn 14, Rt 7, CRm 0, read
    assert got["esr"] == 0x18 << 26 | 1 << 25 | 3 << 20 | 2 << 17 | 3 << 14 | 14 << 10 | 7 << 5 | 1
    assert got["elr"] == _address_of(rig, 0xD53B_E047)


def test_a_load_from_an_unmapped_address_is_a_translation_fault_with_its_far() -> None:
    rig, got = _run("movz x2, #0x8000, lsl #16\n ldr x3, [x2, #0x18]\n", mmu=True)
    assert got["vector"] == 0x200
    assert got["esr"] == 0x25 << 26 | 1 << 25 | 0b000101  # data abort, same EL, level 1 translation
    assert got["far"] == 0x8000_0018
    assert got["elr"] == _address_of(rig, 0xF940_0C43)


def test_a_store_to_a_read_only_page_is_a_permission_fault_with_wnr() -> None:
    rig, got = _run(f"movz x2, #{RAM_BASE >> 16:#x}, lsl #16\n str w3, [x2, #0x24]\n", mmu=True)
    assert got["esr"] == 0x25 << 26 | 1 << 25 | 1 << 6 | 0b001111  # WnR, level 3 permission
    assert got["far"] == RAM_BASE + 0x24


def test_el0_access_to_a_kernel_page_is_a_lower_el_permission_fault() -> None:
    rig, got = _run(TO_EL0 + "movz x2, #0x4008, lsl #16\n ldr x3, [x2, #8]\n", mmu=True)
    assert got["vector"] == 0x400
    assert got["esr"] == 0x24 << 26 | 1 << 25 | 0b001111  # data abort from a lower EL, level 3 permission
    assert got["far"] == 0x4008_0008


def test_a_branch_to_an_unmapped_address_is_an_instruction_abort() -> None:
    _, got = _run("movz x2, #0x8000, lsl #16\n add x2, x2, #0x40\n br x2\n", mmu=True)
    assert got["vector"] == 0x200
    assert got["esr"] == 0x21 << 26 | 1 << 25 | 0b000101  # instruction abort, same EL, level 1
    assert got["far"] == got["elr"] == 0x8000_0040


def test_a_page_fault_handler_can_map_the_page_and_retry() -> None:
    """What Linux's do_page_fault does: fix the table, return to the faulting load, which then
    completes (the fault is retried, the ELR is the load)."""
    pte = pte_offset(0x4010_0000)
    rig = Rig(assemble(SET_VBAR + MMU_ON + """
        movz x2, #0x4010, lsl #16
        ldr x3, [x2, #0x10]
        wfi
        .balign 0x800
    vectors:
        .balign 0x80
        .rept 4
        .balign 0x80
        b bad
        .endr
        .balign 0x80
        mrs x10, far_el1     /* current EL, SPx, synchronous: the page fault */
        mrs x11, esr_el1
        str x12, [x13]       /* x12: the page's descriptor, x13: its level 3 entry */
        dsb ishst
        lsr x14, x10, #12
        tlbi vae1is, x14
        dsb ish
        eret
    bad:
        hlt #1
    """), ram_size=2 << 20)
    build_tables(rig.ram)
    rig.ram[pte:pte + 8] = bytes(8)  # not mapped yet
    rig.ram[0x10_0010:0x10_0018] = (0x1234_5678).to_bytes(8, "little")
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(reg_x(12), RAM_BASE + 0x10_0000 | 0x703)  # AF, SH inner, page
    vcpu.set_one_reg(reg_x(13), RAM_BASE + pte)
    assert isinstance(rig.run(), HaltExit)
    assert vcpu.get_one_reg(reg_x(10)) == 0x4010_0010
    assert vcpu.get_one_reg(reg_x(11)) == 0x25 << 26 | 1 << 25 | 0b000111  # level 3 translation fault
    assert vcpu.get_one_reg(reg_x(3)) == 0x1234_5678


def test_eret_to_el1_is_legal_because_el1_is_aarch64() -> None:
    """HCR_EL2.RW = 1, as KVM sets it for an AArch64 vCPU: with RW = 0, EL1 would be AArch32 and
    this ERET (Linux's return from its EL1 exception handlers) an illegal exception return."""
    rig = Rig(assemble("""
        adr x1, 1f
        msr elr_el1, x1
        mov x1, #0x3c4
        msr spsr_el1, x1
        eret
    1:  mov x0, #7
        wfi
    """))
    assert isinstance(rig.run(), HaltExit)
    vcpu = rig.vcpus[0]
    assert vcpu.get_one_reg(reg_x(0)) == 7
    assert vcpu.get_one_reg(REG_PSTATE) == 0x3C4  # EL1t, no illegal-state bit


def test_an_exception_without_vectors_stops_the_vcpu_where_it_arose() -> None:
    rig = Rig(assemble("nop\n svc #3\n b ."))
    ex = rig.run()
    assert isinstance(ex, InternalErrorExit)
    assert "SVC with VBAR_EL1 = 0x0" in ex.detail and "cannot take" in ex.detail
    assert ex.pc == RAM_BASE + 4 and ex.instruction.startswith("svc")
    assert rig.vcpus[0].get_one_reg(REG_PC) == RAM_BASE + 8  # state as the engine left it
    assert rig.vcpus[0].get_one_reg(REG_PSTATE) == 0x3C5


def test_where_unicorn_hides_the_record_an_exception_stops_the_vcpu_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syndrome, "calibrate", lambda: None)  # another unicorn build
    rig = Rig(assemble(SET_VBAR + "svc #0\n" + VECTORS))
    ex = rig.run()
    assert isinstance(ex, InternalErrorExit)
    assert "SVC: this unicorn does not expose the exception's syndrome" in ex.detail
    assert ex.instruction.startswith("svc") and ex.pc == _address_of(rig, 0xD400_0001)
