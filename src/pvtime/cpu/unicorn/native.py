"""Native hooks: the block counter, a per-block callback written in C, with its Python twin.

Virtual time needs the number of guest instructions executed. Unicorn's own `count` argument
instruments every instruction and runs guest code about 6x slower (measured: 0.11 vs 0.71 GIPS).
A `UC_HOOK_BLOCK` callback costs one call per translation block instead, but it runs for every
block the guest executes, and a Python callback costs about a microsecond per block (0.002 GIPS).
So the hook is native: `native/block_counter.c`, a handful of instructions, which does per block

    if (c->used >= c->limit) { c->stopped = 1; uc_emu_stop(uc); return; }  /* not counted */
    c->used += size;                                                        /* bytes */

A block that would start at or past the budget is stopped before it executes and is not counted,
so `used` counts exactly the blocks that ran. Time is therefore charged per block entered: a block
left early by a trap (an MMIO access in its middle) is charged whole. That is deterministic, which
is what virtual time needs.

`native/build.py` builds the C source with zig cc for x86-64 and aarch64 Linux hosts into
`pvtime/native/block_counter.<arch>.so`, shipped in the package (a test rebuilds them and compares
the bytes). They need nothing at run time, not even libc: the state the hook works on carries the
address of `uc_emu_stop`. The one for the running host is loaded with ctypes. Where none fits (another
operating system or architecture), or with `PVTIME_NATIVE=0` in the environment, the same logic
runs as a Python block hook: identical results, much slower.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from importlib import resources
from pathlib import Path

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

#: Set to 0 to run the Python twins of the native hooks.
NATIVE_ENV = "PVTIME_NATIVE"

_HOOK_SYMBOL = "pvtime_block_counter"
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class _State(ctypes.Structure):
    """struct block_counter."""

    _fields_ = [("used", ctypes.c_uint64), ("limit", ctypes.c_uint64), ("emu_stop", ctypes.c_void_p),
                ("stopped", ctypes.c_uint64)]


_BLOCK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def shared_object(arch: str) -> Path:
    """The shipped block counter for a Linux host architecture ("x86_64" or "aarch64")."""
    return Path(str(resources.files("pvtime") / "native" / f"block_counter.{arch}.so"))


def native_enabled() -> bool:
    """Does the environment allow native hooks (`PVTIME_NATIVE` unset or not "0")?"""
    return os.environ.get(NATIVE_ENV, "1").strip() != "0"


def native_hook() -> int | None:
    """The address of the C block hook for this host, or None where no shared object fits."""
    arch = _ARCHES.get(platform.machine().lower())
    if arch is None or platform.system() != "Linux":
        return None
    return _load(arch)


@functools.cache
def _load(arch: str) -> int | None:
    try:
        hook = ctypes.CDLL(str(shared_object(arch)))[_HOOK_SYMBOL]
    except (OSError, AttributeError):
        return None
    return ctypes.cast(hook, ctypes.c_void_p).value  # the library stays loaded: ctypes never unloads


class BlockCounter:
    """Counts the bytes of guest code blocks executed by one engine and stops it at a budget.

    `native`: True to require the C hook, False for the Python one, None (the default) for the C
    hook where it fits this host and the environment allows it.
    """

    def __init__(self, uc: Uc, *, native: bool | None = None) -> None:
        self._state = _State(limit=1 << 63, emu_stop=ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value)
        address = native_hook() if native or (native is None and native_enabled()) else None
        if native and address is None:
            raise RuntimeError("the native block counter is not available on this host")
        self.native = address is not None
        if address is not None:
            callback: object = ctypes.c_void_p(address)
        else:
            callback = self._python_hook()
        self._callback = callback  # kept alive as long as the engine may call it
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, callback,  # noqa: SLF001
                                ctypes.byref(self._state), ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err != 0:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_BLOCK) failed with unicorn error {err}")

    def _python_hook(self) -> object:
        """The C hook's twin: the same logic, called through ctypes."""
        state = self._state
        emu_stop = uclib.uc_emu_stop

        def on_block(uc: int, address: int, size: int, user: int) -> None:
            if state.used >= state.limit:
                state.stopped = 1
                emu_stop(uc)
                return
            state.used += size

        return _BLOCK_CB(on_block)

    @property
    def used(self) -> int:
        """Bytes of code in the blocks executed so far (4 per instruction)."""
        return self._state.used

    @property
    def stopped(self) -> bool:
        """Did the budget stop the engine since `arm()`?"""
        return bool(self._state.stopped)

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` more, as if that much code had run (the cost of a trapped access)."""
        self._state.used += nbytes

    def arm(self, budget_bytes: int) -> None:
        """Allow `budget_bytes` more code (at least one block) before the engine stops."""
        self._state.stopped = 0
        self._state.limit = self._state.used + max(budget_bytes, 1)
