"""A minimal ELF64 writer for test guests: one PT_LOAD segment (RWX) holding `code`, ET_EXEC."""

from __future__ import annotations

import struct

LOAD_ADDR = 0x4008_0000


def make_elf(code: bytes, *, addr: int = LOAD_ADDR, entry: int | None = None, machine: int = 183,
             etype: int = 2, bss: int = 0) -> bytes:
    """An ELF image whose single segment places `code` (plus `bss` zero bytes) at `addr`."""
    ehsize, phsize = 64, 56
    offset = ehsize + phsize
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELF64, little-endian, version 1
    header += struct.pack("<HHIQQQIHHHHHH", etype, machine, 1, addr if entry is None else entry, ehsize, 0, 0,
                          ehsize, phsize, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, offset, addr, addr, len(code), len(code) + bss, 0x1000)
    return header + phdr + code
