"""The guest images shipped in the package, and the `minikernel_config` block a VMM may patch.

A freestanding guest has no command line, so `guests/minikernel.c` keeps its run parameters in
a block in `.data` that a VMM (or a test) patches in its copy of the ELF file before loading it:
`{u64 magic = "PVMKCFG1"; u64 duration_ms; u64 busy_ms; u64 idle_ms}` at the symbol
`minikernel_config` (guests/README.md). This module is the one place that knows the block.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from pvtime.vmm.elf import ElfError

PACKAGE_IMAGES = ("conformance", "minikernel")
MINIKERNEL_CONFIG_SYMBOL = "minikernel_config"
MINIKERNEL_CONFIG_MAGIC = b"PVMKCFG1"


def packaged_image(name: str) -> Path:
    """The path of a shipped image (`src/pvtime/images/<name>.elf`); ValueError for an unknown name."""
    if name not in PACKAGE_IMAGES:
        raise ValueError(f"no packaged image {name!r} (packaged: {', '.join(PACKAGE_IMAGES)})")
    return Path(str(resources.files("pvtime") / "images" / f"{name}.elf"))


LINUX_FILES = ("Image.gz", "initramfs.cpio.gz", "manifest.json")


def linux_image(name: str) -> Path:
    """A file of the packaged Linux guest (`src/pvtime/images/linux/`: the kernel Image.gz, the
    initramfs, their manifest); ValueError for an unknown name."""
    if name not in LINUX_FILES:
        raise ValueError(f"no packaged Linux file {name!r} (packaged: {', '.join(LINUX_FILES)})")
    return Path(str(resources.files("pvtime") / "images" / "linux" / name))


@dataclass(frozen=True)
class MinikernelConfig:
    """The run parameters of the minikernel, in counter-time milliseconds."""

    duration_ms: int
    busy_ms: int
    idle_ms: int


def _config_offset(data: bytes, name: str) -> int | None:
    """File offset of the `minikernel_config` block, None when the image has no such symbol."""
    try:
        elf = ELFFile(io.BytesIO(data))
        symtab = elf.get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name(MINIKERNEL_CONFIG_SYMBOL) \
            if isinstance(symtab, SymbolTableSection) else None
        if not syms:
            return None
        addr = syms[0]["st_value"]
        for seg in elf.iter_segments():
            # The block must be in the file bytes of a loaded segment, or a patch would not load.
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr and addr + 32 <= seg["p_vaddr"] + seg["p_filesz"]:
                off: int = seg["p_offset"] + addr - seg["p_vaddr"]
                break
        else:
            raise ElfError(f"{name}: {MINIKERNEL_CONFIG_SYMBOL} at {addr:#x} is not in a loaded segment's file bytes")
    except _PyElfError as err:
        raise ElfError(f"{name}: malformed ELF: {err}") from None
    if data[off:off + 8] != MINIKERNEL_CONFIG_MAGIC:
        raise ElfError(f"{name}: {MINIKERNEL_CONFIG_SYMBOL} does not start with {MINIKERNEL_CONFIG_MAGIC!r}")
    return off


def has_minikernel_config(data: bytes, name: str = "<image>") -> bool:
    """Does the image carry a patchable `minikernel_config` block? (ElfError if it is malformed.)"""
    return _config_offset(data, name) is not None


def read_minikernel_config(data: bytes, name: str = "<image>") -> MinikernelConfig:
    """The parameters as they are in the image."""
    off = _config_offset(data, name)
    if off is None:
        raise ElfError(f"{name}: no {MINIKERNEL_CONFIG_SYMBOL} symbol: its parameters cannot be set")
    return MinikernelConfig(*struct.unpack_from("<3Q", data, off + 8))


def patch_minikernel(data: bytes, *, duration_ms: int | None = None, busy_ms: int | None = None,
                     idle_ms: int | None = None, name: str = "<image>") -> bytes:
    """A copy of the ELF file with the given `minikernel_config` fields set (None: keep the image's)."""
    old = read_minikernel_config(data, name)
    new = MinikernelConfig(old.duration_ms if duration_ms is None else duration_ms,
                           old.busy_ms if busy_ms is None else busy_ms,
                           old.idle_ms if idle_ms is None else idle_ms)
    for field, value in vars(new).items():
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{name}: {MINIKERNEL_CONFIG_SYMBOL}.{field} {value} does not fit a u64")
    off = _config_offset(data, name)
    assert off is not None
    block = struct.pack("<3Q", new.duration_ms, new.busy_ms, new.idle_ms)
    return data[:off + 8] + block + data[off + 32:]




# --- what the guests print -----------------------------------------------------------------------

_CPU_LINE = re.compile(r"^cpu(\d+) +(\d+(?: +\d+)*) *\r?$", re.M)  # a tty ends lines with \r\n
_AGG_LINE = re.compile(r"^cpu +\d+(?: +\d+)* *\r?$", re.M)
_STEAL_NS_LINE = re.compile(r"^steal_ns cpu(\d+) (\d+) *$", re.M)
PROC_STAT_STEAL = 7  # index of steal in a /proc/stat cpu line (user nice system idle iowait irq softirq steal ...)


@dataclass(frozen=True)
class ConsoleProcStat:
    """The `/proc/stat`-style lines a guest printed on its console (the minikernel's report).

    `cpus[n]` are the numbers of the `cpuN` line in USER_HZ; `steal_ns[n]` the exact
    cpustat[CPUTIME_STEAL] of a `steal_ns cpuN <ns>` line, when the guest prints one.
    """

    cpus: dict[int, tuple[int, ...]]
    steal_ns: dict[int, int]
    lines: tuple[str, ...]

    @classmethod
    def parse(cls, console: str) -> ConsoleProcStat:
        """Pick the lines out of a whole console (other output is ignored; the last report wins)."""
        cpus = {int(m[1]): tuple(int(x) for x in m[2].split()) for m in _CPU_LINE.finditer(console)}
        cpus = {k: v for k, v in cpus.items() if len(v) > PROC_STAT_STEAL}
        steal = {int(m[1]): int(m[2]) for m in _STEAL_NS_LINE.finditer(console)}
        lines = tuple(m[0] for rx in (_AGG_LINE, _CPU_LINE) for m in rx.finditer(console))
        return cls(cpus, steal, lines)


__all__ = ["MINIKERNEL_CONFIG_SYMBOL", "PACKAGE_IMAGES", "PROC_STAT_STEAL", "ConsoleProcStat", "MinikernelConfig",
           "has_minikernel_config", "packaged_image", "patch_minikernel", "read_minikernel_config"]
