"""One-instruction AArch64 disassembly (capstone) for fault diagnostics."""

from __future__ import annotations

from functools import lru_cache

import capstone


@lru_cache(maxsize=1)
def _engine() -> capstone.Cs:
    arch = getattr(capstone, "CS_ARCH_ARM64", None)
    if arch is None:  # capstone >= 6 renamed the architecture
        arch = capstone.CS_ARCH_AARCH64
    return capstone.Cs(arch, capstone.CS_MODE_ARM)


def disassemble(word: int | bytes | None, pc: int = 0) -> str:
    """The instruction as `mnemonic operands`, `.inst 0x...` if it does not decode, '' if unknown."""
    if word is None:
        return ""
    data = word.to_bytes(4, "little") if isinstance(word, int) else bytes(word[:4])
    if len(data) < 4:
        return ""
    for insn in _engine().disasm(data, pc, 1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return f".inst {int.from_bytes(data, 'little'):#010x}"
