"""Guest memory in the engine: memslots mapped shared, dirty-log write protection, MMIO exits.

Every memslot buffer is mapped into the vCPU's engine with `mem_map_ptr`, so RAM is shared by all
vCPUs of a VM and by the VMM, byte for byte. Read-only slots are mapped read-only; a guest write
to one is an MMIO write exit, as in KVM. Any other data access is an MMIO exit when it has a valid
syndrome (`mmio_decode`), and an internal error otherwise. During an MMIO exit the PC still points
at the access; the next run writes a read's data (given with `complete_mmio`) to the destination
register and moves the PC past it (kvm_handle_mmio_return).

Addresses: the engine hands the hooks guest-physical data addresses, but the PC is virtual once
the guest turns its MMU on. So an instruction is read where the vCPU would fetch it (`fetch`:
translated by the engine's MMU, as the vCPU is now), never at the PC taken as a physical address.

Translation caches: each engine caches translations (its TLB) and translated code of its own,
and sees only its own stores. A TLBI or IC on one vCPU must reach the others, as broadcast
maintenance does on hardware: `invalidate_others` marks every other engine mapping the same RAM,
and each drops its TLB or its translated code before it next runs (`sync`). The vCPUs run one at
a time, so none runs in between.

Dirty logging (KVM_MEM_LOG_DIRTY_PAGES) is KVM's stage-2 write protection: a logging slot is
mapped read-only in the engine; the first store to a page stops the engine at the store, the page
is marked dirty and made writable, and the store is retried. Reading the log (KVM_GET_DIRTY_LOG)
changes the slot's `log_generation`, and the next run protects it again.

The hook that sees the refused accesses (`hook_faults`) is installed over the addresses no slot
backs (unmapped accesses) and over the read-only and write-protected slots (write-protection
faults) only, never over writable RAM: unicorn makes every access to an address a memory hook's
range covers slower, even a hook for faults that cannot happen there (measured on a Linux boot:
the engine ran about 40% slower with the hook over all addresses; bench/bench_linux.py).
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from unicorn import (
    UC_HOOK_MEM_FETCH_UNMAPPED, UC_HOOK_MEM_READ_UNMAPPED, UC_HOOK_MEM_WRITE_PROT, UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc,
)
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TB_FLUSH, UC_CTL_TLB_FLUSH

from pvtime.abi.uapi import PAGE_SIZE
from pvtime.abi.widths import U64
from pvtime.cpu.backend import GuestRegion, Stop, StopKind
from pvtime.cpu.disasm import disassemble
from pvtime.cpu.mmio_decode import MmioAccess, decode
from pvtime.cpu.unicorn.fault_hook import FaultHook, fetch_word
from pvtime.cpu.unicorn.registers import Registers


_UNMAPPED = UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED

# An instruction's MMIO access depends on its word only; the same few instructions (a console
# driver's, a GIC driver's) make almost every exit.
_decode = functools.lru_cache(maxsize=1024)(decode)

# Every engine's memory, for `invalidate_others` (weak: an engine goes with its vCPU).
_engines: weakref.WeakSet[GuestMemory] = weakref.WeakSet()


@dataclass
class _PendingMmio:
    """An MMIO exit the VMM has not finished: applied at the next run."""

    access: MmioAccess
    pc: int  # the access's instruction (a new PC abandons the access, so it still is at the finish)
    data: bytes | None = None


class GuestMemory:
    """The VM's memslots as one engine maps them, and the accesses that leave the engine."""

    def __init__(self, uc: Uc, *, native: bool | None = None) -> None:
        self._uc = uc
        self._mapped: list[tuple[int, int, bool, int]] = []
        self._synced: Sequence[GuestRegion] | None = None  # the memslots tuple last synced
        self._buffers: list[object] = []  # ctypes views keeping the mapped buffers exported
        # Dirty logging: the log_generation each logging slot was last write-protected for (by
        # guest address), and the logging slots.
        self._wp: dict[int, int | None] = {}
        self._logged: list[GuestRegion] = []
        # The write-protect fault to serve (slot, address, size): set by `take_fault`, served
        # by `log_write` once the engine has stopped.
        self.wp_fault: tuple[GuestRegion, int, int] | None = None
        self._mmio: _PendingMmio | None = None
        self._uch = uc._uch  # noqa: SLF001 - the engine handle, for the C API
        # The buffers this engine maps (by identity), and what it must drop before it runs next.
        self._shared: frozenset[int] = frozenset()
        self._stale_tlb = False
        self._stale_code = False
        # The fault hook, and the (kind, first, last) ranges it is installed over.
        self._faults = FaultHook(uc, native=native)
        self._fault_ranges: tuple[tuple[int, int, int], ...] = ()
        self._hook_fault_ranges()  # no memslots yet: every address faults
        _engines.add(self)

    def fetch(self, va: int) -> int | None:
        """The instruction word the vCPU fetches at virtual address `va` now (through its MMU when
        it is on), or None where it cannot (no translation, or no RAM behind it)."""
        return fetch_word(self._uch, va)

    def fault_stop(self, pc: int, reason: str, word: int | None = None) -> Stop:
        """The stop of a vCPU that cannot go on at `pc`, naming the instruction there."""
        if word is None:
            word = self.fetch(pc)
        text = disassemble(word, pc) if word is not None else "(no memory at the PC)"
        return Stop(StopKind.FAULT, pc=pc, instruction=text, reason=reason)

    # --- memslots ------------------------------------------------------------------------------

    def sync(self, memslots: Sequence[GuestRegion]) -> None:
        """Map the VM's memslots (again, if the VMM changed them since the last run). The same
        tuple as last time is the same slots (kvm's `GuestMemory.snapshot`): nothing to look at."""
        if memslots is self._synced and not (self._stale_tlb or self._stale_code):
            return
        self._synced = memslots if isinstance(memslots, tuple) else None
        slots = sorted(memslots, key=lambda s: s.guest_phys_addr)
        wanted = [(s.guest_phys_addr, s.memory_size, bool(s.readonly), id(s.buffer.obj)) for s in slots]
        changed = wanted != self._mapped
        if changed:
            self._map(slots, wanted)
        if self._protect_logged(slots) or changed:
            self._hook_fault_ranges()
        if self._stale_tlb:
            self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
            self._stale_tlb = False
        if self._stale_code:
            self._uc.ctl(UC_CTL_TB_FLUSH, UC_CTL_IO_WRITE)
            self._stale_code = False

    def _map(self, slots: list[GuestRegion], wanted: list[tuple[int, int, bool, int]]) -> None:
        uc = self._uc
        for gpa, size, _, _ in self._mapped:
            uc.mem_unmap(gpa, size)
        self._mapped, self._buffers = [], []
        for slot, key in zip(slots, wanted, strict=True):
            view = (ctypes.c_char * slot.memory_size).from_buffer(slot.buffer)
            prot = UC_PROT_READ | UC_PROT_EXEC | (0 if slot.readonly else UC_PROT_WRITE)
            uc.mem_map_ptr(slot.guest_phys_addr, slot.memory_size, prot, ctypes.addressof(view))
            self._buffers.append(view)
            self._mapped.append(key)
        self._wp = {}
        self._shared = frozenset(key[3] for key in wanted)

    # --- translation caches shared by the vCPUs --------------------------------------------------

    @property
    def buffers(self) -> frozenset[int]:
        """The guest RAM this engine maps: its buffers, by identity."""
        return self._shared

    def invalidate(self, *, tlb: bool, code: bool) -> None:
        """Drop the cached translations (`tlb`) or the translated code (`code`) before the next run."""
        self._stale_tlb |= tlb
        self._stale_code |= code

    def invalidate_others(self, *, tlb: bool, code: bool) -> None:
        """This vCPU ran a TLBI (`tlb`) or an IC (`code`): every other engine that maps the same RAM
        drops its cached translations, or its translated code, before it runs next."""
        for other in list(_engines):
            if other is not self and other.buffers & self._shared:
                other.invalidate(tlb=tlb, code=code)

    # --- dirty logging -------------------------------------------------------------------------

    def _protect_logged(self, slots: list[GuestRegion]) -> bool:
        """Write-protect every logging slot whose log was read since (KVM's stage-2 write protection
        after KVM_GET_DIRTY_LOG); make a slot writable again when its logging stops. True when a
        slot's protection changed."""
        self._logged = []
        changed = False
        for slot in slots:
            if slot.readonly:
                continue
            gen = slot.log_generation if slot.dirty_logging else None
            if gen is not None:
                self._logged.append(slot)
            if self._wp.get(slot.guest_phys_addr) != gen:
                prot = UC_PROT_READ | UC_PROT_EXEC | (0 if gen is not None else UC_PROT_WRITE)
                self._uc.mem_protect(slot.guest_phys_addr, slot.memory_size, prot)
                self._wp[slot.guest_phys_addr] = gen
                changed = True
        return changed

    def log_write(self) -> None:
        """A guest store hit a write-protected page of a logging slot: mark it dirty, let it write."""
        fault, self.wp_fault = self.wp_fault, None
        assert fault is not None
        slot, address, size = fault
        off = address - slot.guest_phys_addr
        end = min(off + max(size, 1), slot.memory_size)
        slot.mark_dirty(off, end - off)
        first = off - off % PAGE_SIZE
        last = (end - 1) - (end - 1) % PAGE_SIZE + PAGE_SIZE
        self._uc.mem_protect(slot.guest_phys_addr + first, last - first, UC_PROT_READ | UC_PROT_EXEC | UC_PROT_WRITE)

    # --- accesses the engine cannot make -------------------------------------------------------

    @property
    def native_faults(self) -> bool:
        """Is the fault hook the native one (else its Python twin)?"""
        return self._faults.native

    def _hook_fault_ranges(self) -> None:
        """(Re)install the fault hook over the addresses no slot backs and the slots a write faults
        in, and nowhere else (see the module docstring)."""
        ranges: list[tuple[int, int, int]] = []
        start = 0
        for gpa, size, _, _ in self._mapped:  # sorted by address
            if gpa > start:
                ranges.append((_UNMAPPED, start, gpa - 1))
            start = gpa + size
        if start <= U64:
            ranges.append((_UNMAPPED, start, U64))
        ranges += [(UC_HOOK_MEM_WRITE_PROT, gpa, gpa + size - 1) for gpa, size, readonly, _ in self._mapped
                   if readonly or self._wp.get(gpa) is not None]
        wanted = tuple(ranges)
        if wanted == self._fault_ranges:
            return
        self._faults.install(wanted)
        self._fault_ranges = wanted

    def faulted(self) -> bool:
        """Did the engine refuse an access since the last call? (`take_fault` serves it.)"""
        return self._faults.take()

    def take_fault(self) -> Stop | None:
        """The access the engine refused last (`UC_HOOK_MEM_*_UNMAPPED`, `UC_HOOK_MEM_WRITE_PROT`),
        as the fault hook recorded it: the MMIO exit or fault it is, or None for a store to a
        logging slot (in `wp_fault`, for `log_write`). Its address is guest-physical, its PC virtual."""
        r = self._faults.record
        access, address, size, pc = r.type, r.address, r.size, r.pc
        if access == UC_MEM_WRITE_PROT:
            for slot in self._logged:
                if slot.guest_phys_addr <= address < slot.guest_phys_addr + slot.memory_size:
                    self.wp_fault = (slot, address, size)
                    return None
        if access == UC_MEM_FETCH_UNMAPPED:
            return Stop(StopKind.FAULT, pc=address, instruction="(no memory at the PC)",
                        reason=f"instruction fetch from {address:#x}, which no memslot backs")
        word = r.word if r.word_ok else None
        mmio = _decode(word) if word is not None else None
        is_write = access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT)
        if mmio is None or mmio.is_write != is_write:
            what = "store to" if is_write else "load from"
            return self.fault_stop(pc, f"{what} {address:#x} outside RAM by an instruction KVM cannot "
                                       f"emulate (no valid syndrome: not a single-register access "
                                       f"without writeback)", word)
        if is_write:
            data = (r.value & ((1 << (8 * mmio.size)) - 1)).to_bytes(mmio.size, "little")
        else:
            data = b""
        self._mmio = _PendingMmio(mmio, pc)
        return Stop(StopKind.MMIO, pc=pc, mmio_addr=address, mmio_len=mmio.size, mmio_data=data,
                    mmio_write=is_write)

    # --- MMIO completion -----------------------------------------------------------------------

    @property
    def mmio_pending(self) -> bool:
        """Is an MMIO exit waiting to be finished at the next run?"""
        return self._mmio is not None

    def complete_mmio(self, data: bytes) -> None:
        """The data of the pending MMIO read (kvm_run.mmio.data); ValueError when no read is pending."""
        if self._mmio is None or self._mmio.access.is_write:
            raise ValueError("no MMIO read is pending")
        self._mmio.data = bytes(data)

    def abandon_mmio(self) -> None:
        """Forget the pending MMIO access (a vCPU reset, a new PC)."""
        self._mmio = None

    def finish_mmio(self, regs: Registers) -> None:
        """kvm_handle_mmio_return: write a read's data to Rt, then step past the access."""
        pending, self._mmio = self._mmio, None
        assert pending is not None
        access = pending.access
        if not access.is_write and access.rt != 31:
            regs.write_x(access.rt, access.load_value(pending.data or bytes(access.size)))
        regs.set_pc(pending.pc + 4)
