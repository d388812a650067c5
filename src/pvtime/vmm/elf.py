"""Loading a freestanding AArch64 ELF image into guest RAM the VMM owns (pyelftools).

Only what a bare-metal program needs: little-endian ELF64 for EM_AARCH64, an executable
(ET_EXEC) whose PT_LOAD segments all lie inside RAM. Each segment's file bytes are copied to its
physical address (p_paddr, which equals p_vaddr for such images) and the rest of its memory size
is zeroed. Every problem raises `ElfError` naming the image and what is wrong. `elf_layout` makes
the same checks from the headers alone, for a RAM size without the RAM; `load_elf` makes them
before it writes, so a refused image leaves RAM untouched.
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
    """One PT_LOAD segment as placed in guest memory, and where its bytes are in the file."""

    gpa: int
    file_size: int
    mem_size: int
    flags: str  # "rwx" subset
    file_offset: int


@dataclass(frozen=True)
class LoadedImage:
    """Where an image went: its entry point and segments."""

    name: str
    entry: int
    segments: tuple[Segment, ...]


def elf_layout(image: bytes | Path | str, ram_base: int, ram_size: int) -> LoadedImage:
    """Where `image` would go in guest RAM `[ram_base, ram_base + ram_size)`, from its headers alone.

    `load_elf`'s checks, in its order and with its messages, without RAM to copy into: a VMM (or a
    scenario check) can refuse an image for a VM of any size before allocating the VM's memory.
    """
    name, data = _read(image)
    return _layout(name, data, ram_base, ram_size)


def load_elf(image: bytes | Path | str, ram: bytearray | memoryview, ram_base: int) -> LoadedImage:
    """Copy `image`'s PT_LOAD segments into `ram` (guest-physical `ram_base`); return the entry."""
    name, data = _read(image)
    loaded = _layout(name, data, ram_base, len(ram))
    for s in loaded.segments:
        off = s.gpa - ram_base
        ram[off:off + s.file_size] = data[s.file_offset:s.file_offset + s.file_size]
        ram[off + s.file_size:off + s.mem_size] = bytes(s.mem_size - s.file_size)
    return loaded


def _read(image: bytes | Path | str) -> tuple[str, bytes]:
    if isinstance(image, (str, Path)):
        try:
            return str(image), Path(image).read_bytes()
        except OSError as err:
            raise ElfError(f"{image}: cannot read the image: {err.strerror or err}") from None
    return "<image>", bytes(image)


def _layout(name: str, data: bytes, ram_base: int, ram_size: int) -> LoadedImage:
    if data[:4] != b"\x7fELF":
        raise ElfError(f"{name}: not an ELF file (no \\x7fELF magic)")
    try:
        return _segments(name, ELFFile(io.BytesIO(data)), len(data), ram_base, ram_size)
    except _PyElfError as err:
        raise ElfError(f"{name}: malformed ELF: {err}") from None
    except (ValueError, IndexError, KeyError, TypeError) as err:
        if isinstance(err, ElfError):
            raise
        raise ElfError(f"{name}: malformed ELF: {err}") from None


def _segments(name: str, elf: ELFFile, file_size: int, ram_base: int, ram_size: int) -> LoadedImage:
    if elf.elfclass != 64 or not elf.little_endian:
        raise ElfError(f"{name}: ELF{elf.elfclass} {'little' if elf.little_endian else 'big'}-endian; "
                       f"an AArch64 guest is ELF64 little-endian")
    if elf["e_machine"] != "EM_AARCH64":
        raise ElfError(f"{name}: machine {elf['e_machine']}, not EM_AARCH64")
    if elf["e_type"] != "ET_EXEC":
        raise ElfError(f"{name}: type {elf['e_type']}; a freestanding guest must be linked as an executable "
                       f"(ET_EXEC) at its load address")
    ram_end = ram_base + ram_size
    segments = []
    for i, seg in enumerate(elf.iter_segments()):
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        gpa, filesz, memsz, offset = seg["p_paddr"], seg["p_filesz"], seg["p_memsz"], seg["p_offset"]
        if filesz > memsz:
            raise ElfError(f"{name}: segment {i}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if offset + filesz > file_size:
            raise ElfError(f"{name}: segment {i}: file bytes [{offset:#x}, {offset + filesz:#x}) lie past "
                           f"the end of the file ({file_size:#x} bytes): truncated image?")
        if not (ram_base <= gpa and gpa + memsz <= ram_end):
            raise ElfError(f"{name}: segment {i} at [{gpa:#x}, {gpa + memsz:#x}) is outside guest RAM "
                           f"[{ram_base:#x}, {ram_end:#x}); give the guest more memory or relink it")
        flags = seg["p_flags"]
        segments.append(Segment(gpa, filesz, memsz, "".join(c for c, b in (("r", 4), ("w", 2), ("x", 1))
                                                                if flags & b), offset))
    if not segments:
        raise ElfError(f"{name}: no PT_LOAD segment to load")
    entry = elf["e_entry"]
    if not any(s.gpa <= entry < s.gpa + s.mem_size and "x" in s.flags for s in segments):
        raise ElfError(f"{name}: entry point {entry:#x} is not inside an executable loaded segment")
    return LoadedImage(name, entry, tuple(segments))
