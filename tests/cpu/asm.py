"""Assemble tiny AArch64 test programs with zig cc (the `ziglang` package), cached by source."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

_CACHE = Path(tempfile.gettempdir()) / "pvtime-test-asm"


def assemble(source: str) -> bytes:
    """The .text bytes of `source` (GNU assembler syntax; branches to local labels only)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    _CACHE.mkdir(exist_ok=True)
    out = _CACHE / f"{key}.bin"
    if out.exists():
        return out.read_bytes()
    src, obj = _CACHE / f"{key}.S", _CACHE / f"{key}.o"
    src.write_text(".text\n.global _start\n_start:\n" + source + "\n")
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=aarch64-freestanding-none",
                    "-mcpu=cortex_a72", "-c", str(src), "-o", str(obj)], check=True, capture_output=True)
    with obj.open("rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text").data()
        if elf.get_section_by_name(".rela.text") is not None:
            raise ValueError("test program needs relocations: use local labels only")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(text)
    tmp.replace(out)
    return text


# A vector table at the label `vectors` whose first five entries spin (`b .`); the code after this
# text is the sixth entry: an IRQ taken from the current EL with SP_ELx (VBAR_EL1 + 0x280).
IRQ_VECTORS = """
        .balign 0x800
    vectors:
        .rept 5
        b .
        .balign 0x80
        .endr
"""
