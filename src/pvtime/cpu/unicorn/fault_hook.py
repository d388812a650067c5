"""The access-fault hook: records each access the engine refuses, for `memory` to serve once the
engine has stopped.

Unicorn calls a `UC_HOOK_MEM_*_UNMAPPED` or `UC_HOOK_MEM_WRITE_PROT` hook for an access it cannot
make -- every MMIO access a guest makes, about 7,500 in a Linux boot -- and stops with the fault
when the hook returns false. The hook only records what the run loop needs afterwards: the
access's kind, address, size and stored value, the PC, and the instruction word the vCPU fetches
there (read through its MMU: `fetch_word`, which `GuestMemory.fetch` uses too). `native/access_fault.c` does that in C;
a Python hook doing the same through the binding cost about 12 us an access (its wrapper, the PC
and instruction reads), a tenth of a Linux boot's time outside the engine. Where the C hook does
not fit the host, or with `PVTIME_NATIVE=0`, its Python twin records the same through the same C
API calls.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from unicorn import UC_PROT_EXEC, Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi.widths import U64
from pvtime.cpu.unicorn.native import ACCESS_FAULT, _choose, _hook_add


class FaultRecord(ctypes.Structure):
    """struct access_fault: the C API it calls, and the last access recorded."""

    _fields_ = [("reg_read", ctypes.c_void_p), ("vmem_read", ctypes.c_void_p), ("pc_id", ctypes.c_uint64),
                ("exec_prot", ctypes.c_uint64), ("count", ctypes.c_uint64), ("type", ctypes.c_uint64),
                ("address", ctypes.c_uint64), ("size", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("pc", ctypes.c_uint64), ("word", ctypes.c_uint64), ("word_ok", ctypes.c_uint64)]


#: A UC_HOOK_MEM_* fault callback: (engine, uc_mem_type, address, size, value, user data) -> handled.
_FAULT_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                             ctypes.c_int64, ctypes.c_void_p)
# uc_vmem_read (unicorn >= 2.1.2; the Python binding does not wrap it): bytes at a virtual address,
# read through the engine's MMU as the vCPU is now, for an access of the given kind; 0 on success.
_vmem_read = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_size_t)(("uc_vmem_read", uclib))


def fetch_word(uch: int, va: int) -> int | None:
    """The instruction word engine `uch`'s vCPU fetches at virtual address `va` now (through its
    MMU when it is on), or None where it cannot (no translation, or no memory behind it)."""
    word = ctypes.c_uint32()
    if _vmem_read(uch, va & U64, UC_PROT_EXEC, ctypes.byref(word), 4):
        return None
    return word.value


class FaultHook:
    """Records the accesses one engine refuses, over the address ranges `install` is given.

    `native` as for `native.BlockCounter`.
    """

    def __init__(self, uc: Uc, *, native: bool | None = None) -> None:
        self._uc = uc
        self._uch = uc._uch  # noqa: SLF001 - the engine handle, for the C API
        self.record = FaultRecord(reg_read=ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value,
                                  vmem_read=ctypes.cast(uclib.uc_vmem_read, ctypes.c_void_p).value,
                                  pc_id=A.UC_ARM64_REG_PC, exec_prot=UC_PROT_EXEC)
        address = _choose(ACCESS_FAULT, native)
        self.native = address is not None
        self._callback: object = ctypes.c_void_p(address) if address is not None else self._python_hook()
        self._handles: list[int] = []
        self._taken = 0

    def _python_hook(self) -> object:
        """The C hook's twin: the same record, through the same C API calls."""
        record = self.record
        reg_read = uclib.uc_reg_read
        pc = ctypes.c_uint64()

        def on_fault(uc: int, kind: int, address: int, size: int, value: int, user: int) -> bool:
            pc.value = 0
            reg_read(uc, record.pc_id, ctypes.byref(pc))
            word = fetch_word(uc, pc.value)
            record.type, record.address, record.size, record.value = kind & 0xFFFF_FFFF, address, size, value
            record.pc, record.word, record.word_ok = pc.value, word or 0, word is not None
            record.count += 1
            return False

        return _FAULT_CB(on_fault)

    def install(self, ranges: Sequence[tuple[int, int, int]]) -> None:
        """Hook exactly these (hook kinds, first address, last address) ranges from now on."""
        for handle in self._handles:
            uclib.uc_hook_del(self._uch, handle)
        self._handles = [_hook_add(self._uc, kind, self._callback, ctypes.byref(self.record), begin=first,
                                   end=last) for kind, first, last in ranges]

    def take(self) -> bool:
        """Was an access recorded since the last call? (`record` holds it.)"""
        count = self.record.count
        if count == self._taken:
            return False
        self._taken = count
        return True
