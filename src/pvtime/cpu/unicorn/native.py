"""Native hooks: the block counter and the system-register filter, callbacks written in C, each
with its Python twin (the fast traps and the access-fault hook are in `fast_traps` and
`fault_hook`).

The block counter. Virtual time needs the number of guest instructions executed. Unicorn's own
`count` argument instruments every instruction and runs guest code about 6x slower (measured: 0.11
vs 0.71 GIPS). A `UC_HOOK_BLOCK` callback costs one call per translation block instead, but it
runs for every block the guest executes, and a Python callback costs about a microsecond per block
(0.002 GIPS). So the hook is native: `native/block_counter.c`, a handful of instructions, which
does per block

    if (c->used >= c->limit) { c->stopped = 1; uc_emu_stop(uc); return; }  /* not counted */
    c->used += size;                                                        /* bytes */

A block that would start at or past the budget is stopped before it executes and is not counted,
so `used` counts exactly the blocks that ran. Time is therefore charged per block entered: a block
left early by a trap (an MMIO access in its middle) is charged whole. That is deterministic, which
is what virtual time needs.

The counter also takes the run loop's one-block steps (`arm_steps`): while an interrupt waits
masked, the loop runs one block at a time and between two blocks only checks that PSTATE.I is
still set and the deadline not reached. At the limit the hook makes those two checks itself (one
`uc_reg_read`) and allows the next block, so a burst of masked blocks is one engine run, stopped
at the very block boundary where the loop's own checks would stop it.

The system-register filter. Unicorn calls a `UC_HOOK_INSN` hook for every MRS, MSR or SYS
instruction the guest executes, and the hypervisor serves only a few registers (the generic
timer, MPIDR_EL1). Linux runs an MRS/MSR every ~130 instructions (`current` is SP_EL0, per-CPU
data hangs off TPIDR_EL1): a Python hook on each costs microseconds (measured, bench_unicorn.py:
code with one untrapped MRS in 32 instructions runs at about 20 MIPS so, 1500 with the filter).
`native/sysreg_filter.c` looks the register (op0, op1, CRn, CRm, op2) up in a 64 KiB table
of classes and returns at once for those outside the set, so the engine executes them itself; an
access in the set is counted by class and handed to the Python hook, or only counted (the TLBI
and IC maintenance a vCPU must tell the other vCPUs about, `traps`). Unicorn calls only the first
hook for a kind of instruction, so one filter serves each of MRS, MSR and SYS, and classes tell
the registers of one filter apart.

`native/build.py` builds each C source with zig cc for x86-64 and aarch64 Linux hosts into
`pvtime/native/<name>.<arch>.so`, shipped in the package (a test rebuilds them and compares the
bytes). They need nothing at run time, not even libc: the state a hook works on carries the
addresses it calls (`uc_emu_stop`, the Python hook). The ones for the running host are loaded with
ctypes. Where none fits (another operating system or architecture), or with `PVTIME_NATIVE=0` in
the environment, the same logic runs as Python hooks: identical results, much slower.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN, Uc
from unicorn.unicorn_py3.unicorn import uclib

#: Set to 0 to run the Python twins of the native hooks.
NATIVE_ENV = "PVTIME_NATIVE"

BLOCK_COUNTER = "block_counter"
SYSREG_FILTER = "sysreg_filter"
FAST_TRAPS = "fast_traps"
ACCESS_FAULT = "access_fault"
# Each shared object's first hook: the one whose presence says the object loads.
_SYMBOLS = {BLOCK_COUNTER: "pvtime_block_counter", SYSREG_FILTER: "pvtime_sysreg_filter",
            FAST_TRAPS: "pvtime_fast_mrs", ACCESS_FAULT: "pvtime_access_fault"}
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def shared_object(arch: str, name: str = BLOCK_COUNTER) -> Path:
    """The shipped native hook `name` for a Linux host architecture ("x86_64" or "aarch64")."""
    return Path(str(resources.files("pvtime") / "native" / f"{name}.{arch}.so"))


def native_enabled() -> bool:
    """Does the environment allow native hooks (`PVTIME_NATIVE` unset or not "0")?"""
    return os.environ.get(NATIVE_ENV, "1").strip() != "0"


def native_hook(name: str = BLOCK_COUNTER) -> int | None:
    """The address of the C hook `name` for this host, or None where no shared object fits."""
    arch = _ARCHES.get(platform.machine().lower())
    if arch is None or platform.system() != "Linux":
        return None
    return _load(arch, name, _SYMBOLS[name])


def native_symbol(name: str, symbol: str) -> int:
    """The address of `symbol` in the shared object `name` for this host (which must load)."""
    arch = _ARCHES.get(platform.machine().lower())
    address = None if arch is None else _load(arch, name, symbol)
    if address is None:
        raise RuntimeError(f"{symbol} is not in the native {name.replace('_', ' ')} of this host")
    return address


@functools.cache
def _load(arch: str, name: str, symbol: str) -> int | None:
    try:
        hook = ctypes.CDLL(str(shared_object(arch, name)))[symbol]
    except (OSError, AttributeError):
        return None
    return ctypes.cast(hook, ctypes.c_void_p).value  # the library stays loaded: ctypes never unloads


def _choose(name: str, native: bool | None) -> int | None:
    """The C hook's address when `native` asks for it (None: where it fits and the environment
    allows it), else None for the Python twin; RuntimeError when it is required but missing."""
    address = native_hook(name) if native or (native is None and native_enabled()) else None
    if native and address is None:
        raise RuntimeError(f"the native {name.replace('_', ' ')} is not available on this host")
    return address


def _hook_add(uc: Uc, kind: int, callback: object, user: object, *extra: object, begin: int = 1,
              end: int = 0) -> int:
    """uc_hook_add of a ctypes or native callback over [begin, end] (all addresses by default);
    its handle."""
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, callback, user,  # noqa: SLF001
                            ctypes.c_uint64(begin), ctypes.c_uint64(end), *extra)
    if err != 0:
        raise RuntimeError(f"uc_hook_add({kind:#x}) failed with unicorn error {err}")
    return handle.value


# --- the block counter -----------------------------------------------------------------------


class _CounterState(ctypes.Structure):
    """struct block_counter."""

    _fields_ = [("used", ctypes.c_uint64), ("limit", ctypes.c_uint64), ("emu_stop", ctypes.c_void_p),
                ("stopped", ctypes.c_uint64), ("steps_left", ctypes.c_uint64), ("steps", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("reg_read", ctypes.c_void_p), ("mask_reg", ctypes.c_uint64),
                ("mask_bit", ctypes.c_uint64)]


_BLOCK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


class BlockCounter:
    """Counts the bytes of guest code blocks executed by one engine and stops it at a budget.

    `step_while`: (unicorn register id, bit) that must be set for `arm_steps`'s steps (the run
    loop's PSTATE.I); without it no step is taken. `native`: True to require the C hook, False for
    the Python one, None (the default) for the C hook where it fits this host and the environment
    allows it.
    """

    def __init__(self, uc: Uc, *, step_while: tuple[int, int] | None = None, native: bool | None = None) -> None:
        mask_reg, mask_bit = step_while or (0, 0)
        self._state = _CounterState(limit=1 << 63, emu_stop=ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value,
                                    reg_read=ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value,
                                    mask_reg=mask_reg, mask_bit=mask_bit)
        address = _choose(BLOCK_COUNTER, native)
        self.native = address is not None
        callback = ctypes.c_void_p(address) if address is not None else self._python_hook()
        self._callback = callback  # kept alive as long as the engine may call it
        _hook_add(uc, UC_HOOK_BLOCK, callback, ctypes.byref(self._state))

    def _python_hook(self) -> object:
        """The C hook's twin: the same logic, called through ctypes."""
        state = self._state
        emu_stop, reg_read = uclib.uc_emu_stop, uclib.uc_reg_read
        value = ctypes.c_uint32()  # unicorn keeps PSTATE in 32 bits

        def step(uc: int) -> bool:
            if not state.steps_left or state.used >= state.deadline:
                return False
            if reg_read(uc, state.mask_reg, ctypes.byref(value)) != 0 or not value.value & state.mask_bit:
                return False
            state.steps_left -= 1
            state.steps += 1
            state.limit = state.used + 1
            return True

        def on_block(uc: int, address: int, size: int, user: int) -> None:
            if state.used >= state.limit and not step(uc):
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
    def used_address(self) -> int:
        """Where `used` is (a uint64_t), for other native hooks that charge it."""
        return ctypes.addressof(self._state) + _CounterState.used.offset

    @property
    def stopped(self) -> bool:
        """Did the budget stop the engine since `arm()`?"""
        return bool(self._state.stopped)

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` more, as if that much code had run (the cost of a trapped access)."""
        self._state.used += nbytes

    def take_steps(self) -> int:
        """The one-block steps `arm_steps` allowed since this was last called (then zero)."""
        steps, self._state.steps = self._state.steps, 0
        return steps

    def arm(self, budget_bytes: int) -> None:
        """Allow `budget_bytes` more code (at least one block) before the engine stops."""
        state = self._state
        state.stopped = state.steps_left = 0
        state.limit = state.used + max(budget_bytes, 1)

    def arm_steps(self, steps: int, deadline: int) -> None:
        """Allow one more block, then up to `steps` more one at a time, each only while the
        `step_while` bit is set and `used` is below `deadline` at its start."""
        state = self._state
        state.stopped = 0
        state.steps_left = max(steps, 0) if state.mask_bit else 0
        state.deadline = deadline
        state.limit = state.used + 1


# --- the system-register filter --------------------------------------------------------------


class CpReg(ctypes.Structure):
    """uc_arm64_cp_reg, as an MRS/MSR/SYS hook receives it (`val`: the value written, or Xt)."""

    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


#: A UC_HOOK_INSN callback for MRS/MSR/SYS: (engine, Rt's unicorn id, the register, user data)
#: -> 1 when the hook emulated the instruction, 0 to let the engine execute it.
SYS_HOOK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(CpReg),
                            ctypes.c_void_p)
SysHook = Callable[[int, int, Any, Any], int]  # (engine, Rt, POINTER(CpReg), None) -> 0 or 1


@dataclass(frozen=True)
class NativeNext:
    """A C hook with the SYS_HOOK signature, and the user data it is called with."""

    address: int
    user: int


MAX_CLASSES = 3


class _FilterState(ctypes.Structure):
    """struct sysreg_filter."""

    _fields_ = [("next", ctypes.c_void_p), ("next_user", ctypes.c_void_p),
                ("hits", ctypes.c_uint64 * (MAX_CLASSES + 1)), ("cls", ctypes.c_uint8 * (1 << 16))]


def sysreg_key(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """A system register's (or system instruction's) index in the filter's table."""
    return (op0 & 3) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)


Register = tuple[int, int, int, int, int]  # (op0, op1, CRn, CRm, op2)


class SysregFilter:
    """Hands the hypervisor only the `insn` instructions (UC_ARM64_INS_MRS, _MSR or _SYS) whose
    register (op0, op1, CRn, CRm, op2) is in one of `classes` (up to three sets of registers); the
    engine executes all others itself.

    `next` (a Python callable, or a C hook) is called for those, and its answer is the hook's;
    without `next` they are only counted (`hits(i)` for class i) and left to the engine. `native` as for `BlockCounter`. There must be
    only one filter per kind of instruction on an engine: unicorn calls the first one only.
    """

    def __init__(self, uc: Uc, insn: int, classes: Sequence[Iterable[Register]],
                 next: SysHook | NativeNext | None = None, *, native: bool | None = None) -> None:  # noqa: A002
        if not 1 <= len(classes) <= MAX_CLASSES:
            raise ValueError(f"a filter has 1 to {MAX_CLASSES} classes of registers, not {len(classes)}")
        self._state = state = _FilterState()
        table: dict[int, int] = {}
        for cls, registers in enumerate(classes, start=1):
            for r in registers:
                table[sysreg_key(*r)] = state.cls[sysreg_key(*r)] = cls
        address = _choose(SYSREG_FILTER, native)
        self.native = address is not None
        python_next: SysHook | None
        if isinstance(next, NativeNext):
            state.next, state.next_user = next.address, next.user
            self._next = None
            native_next = SYS_HOOK(next.address)  # what the Python filter calls

            def python_next(uc: int, reg: int, cp: Any, user: Any) -> int:
                return int(native_next(uc, reg, cp, state.next_user))
        else:
            python_next = next
            self._next = SYS_HOOK(next) if next is not None and address is not None else None  # kept alive
            if self._next is not None:
                state.next = ctypes.cast(self._next, ctypes.c_void_p).value
        if address is not None:
            callback: object = ctypes.c_void_p(address)
        else:
            callback = self._python_hook(table, python_next)
        self._callback = callback
        _hook_add(uc, UC_HOOK_INSN, callback, ctypes.byref(state), ctypes.c_int(insn))

    def _python_hook(self, table: dict[int, int], next: SysHook | None) -> object:  # noqa: A002
        """The C hook's twin: the same logic, called through ctypes."""
        hits = self._state.hits

        def on_sys(uc: int, reg: int, cp: ctypes._Pointer[CpReg], user: int | None) -> int:
            c = cp.contents
            cls = table.get(sysreg_key(c.op0, c.op1, c.crn, c.crm, c.op2))
            if cls is None:
                return 0
            hits[cls] += 1
            return next(uc, reg, cp, None) if next is not None else 0

        return SYS_HOOK(on_sys)

    def hits(self, cls: int = 1) -> int:
        """Accesses so far to the registers of class `cls` (1 for the first set)."""
        return self._state.hits[cls]
