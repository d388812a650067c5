"""Loading a freestanding AArch64 ELF image into guest RAM the VMM owns (pyelftools).

Only what a bare-metal program needs: little-endian ELF64 for EM_AARCH64, an executable
(ET_EXEC) whose PT_LOAD segments all lie inside RAM. Each segment's file bytes are copied to its
physical address (p_paddr, which equals p_vaddr for such images) and the rest of its memory size
is zeroed. Every problem raises `ElfError` naming the image and what is wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.elffile import ELFFile


class ElfError(ValueError):
    """The image cannot be loaded; the message names the image and the problem."""


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment as placed in guest memory."""

    gpa: int
    file_size: int
    mem_size: int
    flags: str  # "rwx" subset


@dataclass(frozen=True)
class LoadedImage:
    """Where an image went: its entry point and segments."""

    name: str
    entry: int
    segments: tuple[Segment, ...]


def load_elf(image: bytes | Path | str, ram: bytearray | memoryview, ram_base: int) -> LoadedImage:
    """Copy `image`'s PT_LOAD segments into `ram` (guest-physical `ram_base`); return the entry."""
    if isinstance(image, (str, Path)):
        name = str(image)
        try:
            data = Path(image).read_bytes()
        except OSError as err:
            raise ElfError(f"{name}: cannot read the image: {err.strerror or err}") from None
    else:
        name, data = "<image>", bytes(image)
    if data[:4] != b"\x7fELF":
        raise ElfError(f"{name}: not an ELF file (no \\x7fELF magic)")
    try:
        elf = ELFFile(io.BytesIO(data))
        return _load(name, elf, data, ram, ram_base)
    except _PyElfError as err:
        raise ElfError(f"{name}: malformed ELF: {err}") from None
    except (ValueError, IndexError, KeyError, TypeError) as err:
        if isinstance(err, ElfError):
            raise
        raise ElfError(f"{name}: malformed ELF: {err}") from None


def _load(name: str, elf: ELFFile, data: bytes, ram: bytearray | memoryview, ram_base: int) -> LoadedImage:
    if elf.elfclass != 64 or not elf.little_endian:
        raise ElfError(f"{name}: ELF{elf.elfclass} {'little' if elf.little_endian else 'big'}-endian; "
                       f"an AArch64 guest is ELF64 little-endian")
    if elf["e_machine"] != "EM_AARCH64":
        raise ElfError(f"{name}: machine {elf['e_machine']}, not EM_AARCH64")
    if elf["e_type"] != "ET_EXEC":
        raise ElfError(f"{name}: type {elf['e_type']}; a freestanding guest must be linked as an executable "
                       f"(ET_EXEC) at its load address")
    ram_end = ram_base + len(ram)
    segments = []
    for i, seg in enumerate(elf.iter_segments()):
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        gpa, filesz, memsz, offset = seg["p_paddr"], seg["p_filesz"], seg["p_memsz"], seg["p_offset"]
        if filesz > memsz:
            raise ElfError(f"{name}: segment {i}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if offset + filesz > len(data):
            raise ElfError(f"{name}: segment {i}: file bytes [{offset:#x}, {offset + filesz:#x}) lie past "
                           f"the end of the file ({len(data):#x} bytes): truncated image?")
        if not (ram_base <= gpa and gpa + memsz <= ram_end):
            raise ElfError(f"{name}: segment {i} at [{gpa:#x}, {gpa + memsz:#x}) is outside guest RAM "
                           f"[{ram_base:#x}, {ram_end:#x}); give the guest more memory or relink it")
        off = gpa - ram_base
        ram[off:off + filesz] = data[offset:offset + filesz]
        ram[off + filesz:off + memsz] = bytes(memsz - filesz)
        flags = seg["p_flags"]
        segments.append(Segment(gpa, filesz, memsz, "".join(c for c, b in (("r", 4), ("w", 2), ("x", 1))
                                                                if flags & b)))
    if not segments:
        raise ElfError(f"{name}: no PT_LOAD segment to load")
    entry = elf["e_entry"]
    if not any(s.gpa <= entry < s.gpa + s.mem_size and "x" in s.flags for s in segments):
        raise ElfError(f"{name}: entry point {entry:#x} is not inside an executable loaded segment")
    return LoadedImage(name, entry, tuple(segments))
