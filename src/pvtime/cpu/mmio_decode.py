"""Decode the load/store behind an MMIO exit, as the Arm data-abort syndrome (ESR ISV) gives KVM.

KVM can only emulate an access whose syndrome is valid: a single general-register load or store
without writeback (LDR/STR and their byte/half/signed forms with an immediate or register
offset, LDUR/STUR, LDTR/STTR, LDAR/STLR). Pairs, writeback forms, exclusives and SIMD/FP
accesses have no valid syndrome; KVM then refuses the access (an internal error here too).
"""

from __future__ import annotations

from pvtime.abi.widths import U32, U64

from dataclasses import dataclass


@dataclass(frozen=True)
class MmioAccess:
    """What ESR.ISS says about a data abort with ISV=1."""

    size: int  # bytes: 1, 2, 4 or 8 (SAS)
    is_write: bool  # WnR
    rt: int  # SRT: 31 is the zero register
    sign_extend: bool  # SSE
    reg64: bool  # SF: the destination is an X register

    def load_value(self, data: bytes) -> int:
        """The value a load writes to Xt (Wt writes zero the upper half)."""
        value = int.from_bytes(data[:self.size].ljust(self.size, b"\0"), "little")
        bits = 8 * self.size
        if self.sign_extend and value >> (bits - 1):
            value -= 1 << bits
        return value & (U64 if self.reg64 else U32)


def decode(insn: int) -> MmioAccess | None:
    """The access `insn` makes, or None when it has no valid syndrome (KVM cannot emulate it)."""
    size_log2 = insn >> 30
    rt = insn & 31
    if insn & 0x3FBF_FC00 == 0x089F_FC00:  # LDAR/STLR (bit 22 = L)
        load = bool(insn >> 22 & 1)
        return MmioAccess(1 << size_log2, not load, rt, False, size_log2 == 3)
    single = (insn & 0x3B00_0000 == 0x3900_0000  # unsigned immediate
              or insn & 0x3B20_0C00 in (0x3800_0000, 0x3820_0800, 0x3800_0800))  # LDUR, register, LDTR
    if not single or insn >> 26 & 1:  # SIMD/FP: no syndrome
        return None
    opc = insn >> 22 & 3
    if opc == 0:
        return MmioAccess(1 << size_log2, True, rt, False, size_log2 == 3)
    if opc == 1:
        return MmioAccess(1 << size_log2, False, rt, False, size_log2 == 3)
    if opc == 2 and size_log2 < 3:  # LDRS* to an X register
        return MmioAccess(1 << size_log2, False, rt, True, True)
    if opc == 3 and size_log2 < 2:  # LDRS* to a W register
        return MmioAccess(1 << size_log2, False, rt, True, False)
    return None  # PRFM or unallocated
