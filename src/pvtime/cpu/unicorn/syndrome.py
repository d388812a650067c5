"""The syndrome (ESR) and fault address (FAR) of an exception that unicorn reports to UC_HOOK_INTR.

Unicorn never takes an exception itself: QEMU computes the exception's record (the syndrome, the
virtual address of an abort, the target EL) into its CPU state, then unicorn calls the interrupt
hook with only the exception number, and ESR_ELx / FAR_ELx still hold their old values. Nothing in
unicorn 2.1.4's API exposes the record. But `uc_context_save` copies QEMU's CPU state, record
included, so the record is read from a saved context.

Its offset in the context depends on how unicorn was built (QEMU's CPUARMState layout), so it is
not hard-coded: `calibrate()` finds it once per process, by taking exceptions whose syndrome and
fault address the Arm architecture fixes (an SVC, a BRK, a load and a store that fault in
translation) in a probe engine, and keeping the one offset where every saved context holds the
expected values. If no single offset fits (another unicorn), it returns None and the vCPU stops
at such an exception with a fault that says so, as it did before exceptions were delivered.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass

from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.cpu.unicorn.registers import Registers


@dataclass(frozen=True)
class ExceptionRecord:
    """What QEMU computed for the exception being reported."""

    esr: int  # the syndrome, as ESR_ELx takes it
    far: int  # the faulting virtual address (meaningful for aborts only)
    target_el: int  # the exception level the architecture takes it to


@dataclass(frozen=True)
class _Layout:
    """Offsets in a saved context (from the start of the uc_context, its header included)."""

    syndrome: int  # u32
    vaddress: int  # u64, followed by the u32 target EL
    size: int  # bytes to copy out of the context


# The probes: (instruction, x2, the ESR and FAR the architecture gives). Each runs at EL1 with the
# MMU on and nothing mapped at 0x8000_0000 and above (a level 1 translation fault there). QEMU
# leaves ISV clear for a stage 1 abort, as the architecture allows.
_PROBES: tuple[tuple[int, int, int, int | None], ...] = (
    (0xD402_4681, 0, 0x5600_1234, None),  # svc #0x1234: EC 0x15, IL, imm16
    (0xD428_6420, 0, 0xF200_4321, None),  # brk #0x4321: EC 0x3C, IL, comment
    (0xF940_0C43, 0x8000_0000, 0x9600_0005, 0x8000_0018),  # ldr x3, [x2, #0x18]: EC 0x25, DFSC 0b000101
    (0xF902_3443, 0x8123_4000, 0x9600_0045, 0x8123_4468),  # str x3, [x2, #0x468]: the same with WnR
)
_PROBE_RAM = 0x4000_0000


def _probe_contexts() -> list[bytes]:
    """The saved context at each probe's exception."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A72)
    Registers(uc)  # EL2/EL3 set up as every vCPU's
    uc.mem_map(_PROBE_RAM, 0x1_0000, UC_PROT_ALL)
    # One level 0 table entry, one level 1 block: VA 0x4000_0000..0x7FFF_FFFF -> the same PA.
    uc.mem_write(_PROBE_RAM + 0x1000, struct.pack("<Q", _PROBE_RAM + 0x2000 | 0b11))
    uc.mem_write(_PROBE_RAM + 0x2008, struct.pack("<Q", _PROBE_RAM | 1 << 10 | 3 << 8 | 0b01))
    code = b"".join(word.to_bytes(4, "little") for word, *_ in _PROBES)
    uc.mem_write(_PROBE_RAM + 0x100, code)
    for (crn, crm, op1, op2), value in (((2, 0, 0, 0), _PROBE_RAM + 0x1000),  # TTBR0_EL1
                                        ((10, 2, 0, 0), 0xFF),  # MAIR_EL1: attr 0 normal memory
                                        ((2, 0, 0, 2), 16 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 5 << 32)):  # TCR
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (crn, crm, 3, op1, op2, value))
    sctlr = uc.reg_read(A.UC_ARM64_REG_CP_REG, (1, 0, 3, 0, 0))
    uc.reg_write(A.UC_ARM64_REG_CP_REG, (1, 0, 3, 0, 0, sctlr | 1))  # SCTLR_EL1.M
    context = uc.context_save()
    saved: list[bytes] = []

    def on_interrupt(uc: Uc, intno: int, user: object) -> None:
        uc.context_update(context)
        saved.append(ctypes.string_at(context.context, context.size))  # uc_context_size: all of it
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_interrupt)
    for i, (_, x2, _, _) in enumerate(_PROBES):
        uc.reg_write(A.UC_ARM64_REG_X2, x2)
        uc.emu_start(_PROBE_RAM + 0x100 + 4 * i, 0, count=1)
    return saved


def _offsets(contexts: list[bytes], values: list[int], fmt: str) -> set[int]:
    """The aligned offsets at which context i holds values[i], in every context."""
    size = struct.calcsize(fmt)
    found: set[int] | None = None
    for raw, value in zip(contexts, values, strict=True):
        pattern, here, at = struct.pack(fmt, value), set(), raw.find(struct.pack(fmt, value))
        while at >= 0:
            if at % size == 0:
                here.add(at)
            at = raw.find(pattern, at + 1)
        found = here if found is None else found & here
    return found or set()


@functools.cache
def calibrate() -> _Layout | None:
    """Where a saved context holds the exception record in this unicorn, or None if not found."""
    contexts = _probe_contexts()
    if len(contexts) != len(_PROBES):
        return None
    syndrome = _offsets(contexts, [esr for *_, esr, _ in _PROBES], "<I")
    aborts = [(raw, far) for raw, (*_, far) in zip(contexts, _PROBES, strict=True) if far is not None]
    vaddress = _offsets([raw for raw, _ in aborts], [far for _, far in aborts], "<Q")
    if len(syndrome) != 1 or len(vaddress) != 1:
        return None
    at_syndrome, at_vaddress = syndrome.pop(), vaddress.pop()
    layout = _Layout(at_syndrome, at_vaddress, max(at_syndrome + 4, at_vaddress + 12))
    if any(struct.unpack_from("<I", raw, layout.vaddress + 8)[0] != 1 for raw in contexts):
        return None  # the target EL does not follow the address: not the record we know
    return layout


class ExceptionRecords:
    """Reads the record of the exception being reported, from one engine's hooks."""

    def __init__(self, uc: Uc) -> None:
        self._uch = uc._uch  # noqa: SLF001 - the engine handle, for the C API
        self._layout = calibrate()
        self._context = uc.context_save() if self._layout is not None else None

    def read(self) -> ExceptionRecord | None:
        """The record of the exception the interrupt hook is reporting (call it from the hook)."""
        layout, context = self._layout, self._context
        if layout is None or context is None:
            return None
        uclib.uc_context_save(self._uch, context.context)
        base = context.context.value
        (esr,) = struct.unpack("<I", ctypes.string_at(base + layout.syndrome, 4))
        far, target_el = struct.unpack("<QI", ctypes.string_at(base + layout.vaddress, 12))
        return ExceptionRecord(esr, far, target_el)
