"""Running a shipped native hook (src/pvtime/native/NAME.ARCH.so) once inside unicorn, on either
architecture's engine, so that CI on one architecture checks the builds of both: the C calling
convention of each, the shared object's code placed in memory, a call set up to return to a
given address."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from unicorn import UC_ARCH_ARM64, UC_ARCH_X86, UC_MODE_64, UC_MODE_ARM, Uc
from unicorn import arm64_const as A
from unicorn import x86_const as X

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "pvtime" / "native"


@dataclass(frozen=True)
class Abi:
    """An architecture's engine and C calling convention (the first four integer arguments)."""

    engine: int
    mode: int
    ret: bytes  # a `ret` instruction, for stubs
    args: tuple[int, int, int, int]  # argument registers
    result: int  # the return-value register
    sp: int
    lr: int | None  # the link register; None: the return address is on the stack


ABIS = {
    "x86_64": Abi(UC_ARCH_X86, UC_MODE_64, b"\xc3",
                  (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX), X.UC_X86_REG_RAX,
                  X.UC_X86_REG_RSP, None),
    "aarch64": Abi(UC_ARCH_ARM64, UC_MODE_ARM, bytes.fromhex("c0035fd6"),
                   (A.UC_ARM64_REG_X0, A.UC_ARM64_REG_X1, A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3), A.UC_ARM64_REG_X0,
                   A.UC_ARM64_REG_SP, A.UC_ARM64_REG_LR),
}


def shipped(name: str, arch: str, symbol: str) -> tuple[int, list[tuple[int, bytes]]]:
    """The address of `symbol` in the shipped `name` for `arch` (relative to where the object is
    placed), and its loadable segments as (address, bytes)."""
    with open(SHIPPED / f"{name}.{arch}.so", "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        entry = next(s["st_value"] for s in dynsym.iter_symbols() if s.name == symbol)
        segments = [(s["p_vaddr"], s.data()) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    return entry, segments


def set_up_call(uc: Uc, abi: Abi, args: tuple[int, int, int, int], stack: int, ret: int) -> None:
    """Arguments in their registers, the stack pointer at `stack`, returning to `ret`."""
    for reg, value in zip(abi.args, args, strict=True):
        uc.reg_write(reg, value)
    if abi.lr is None:  # x86-64: the return address is on the stack
        uc.mem_write(stack - 8, ret.to_bytes(8, "little"))
        uc.reg_write(abi.sp, stack - 8)
    else:
        uc.reg_write(abi.sp, stack)
        uc.reg_write(abi.lr, ret)
