"""Guest physical memory: memslots backed by buffers the VMM owns (KVM_SET_USER_MEMORY_REGION)."""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field

from pvtime.abi.errno import EEXIST, EFAULT, EINVAL, ENOENT
from pvtime.abi.uapi import (
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEM_VALID_FLAGS, KVM_USER_MEM_SLOTS, PAGE_SIZE,
)
from pvtime.kvm.errors import KvmError


_generations: itertools.count[int] = itertools.count(1)  # Memslot.log_generation


@dataclass
class Memslot:
    """One slot: `memory_size` bytes of the VMM's `buffer` at `guest_phys_addr`."""

    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: int
    buffer: memoryview
    # KVM_MEM_LOG_DIRTY_PAGES: the page indexes written since the last KVM_GET_DIRTY_LOG, by the
    # host (kvm_write_guest) and by guest stores (a CPU backend's write-protect fault).
    dirty_pages: set[int] = field(default_factory=set)
    # Changes (process-unique) whenever guest write protection must be re-armed: a new slot, and
    # each KVM_GET_DIRTY_LOG. A CPU backend that caches write access re-protects when it changes.
    log_generation: int = field(default_factory=lambda: next(_generations))

    @property
    def end(self) -> int:
        """First address past the slot."""
        return self.guest_phys_addr + self.memory_size

    @property
    def readonly(self) -> bool:
        """KVM_MEM_READONLY: guest writes exit to the VMM, host writes fail."""
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def dirty_logging(self) -> bool:
        """KVM_MEM_LOG_DIRTY_PAGES is set: writes are recorded in `dirty_pages`."""
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    def mark_dirty(self, offset: int, size: int = 1) -> None:
        """mark_page_dirty for the bytes [offset, offset+size) of the slot (only while logging)."""
        if self.flags & KVM_MEM_LOG_DIRTY_PAGES:
            self.dirty_pages.update(range(offset // PAGE_SIZE, (offset + max(size, 1) - 1) // PAGE_SIZE + 1))

    def contains(self, gpa: int, size: int = 1) -> bool:
        """Is [gpa, gpa+size) inside the slot?"""
        return self.guest_phys_addr <= gpa and gpa + size <= self.end




def _user_buffer(slot: int, userspace: object, memory_size: int) -> memoryview:
    """The VMM's memory behind userspace_addr, as bytes: EINVAL when it is not writable,
    contiguous memory of at least `memory_size` bytes (access_ok fails)."""
    if userspace is None:
        raise KvmError(EINVAL, f"memslot {slot}: no userspace buffer")
    try:
        view = memoryview(userspace).cast("B")  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not a buffer, not contiguous, or released
        raise KvmError(EINVAL, f"memslot {slot}: {type(userspace).__name__} is not contiguous memory the "
                               "VMM owns") from None
    if view.readonly or len(view) < memory_size:
        raise KvmError(EINVAL, f"memslot {slot}: the buffer must be writable and at least "
                               f"{memory_size:#x} bytes")
    return view


def _address(view: memoryview) -> int:
    """userspace_addr: where a (writable, non-empty) buffer starts in the VMM's memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class GuestMemory:
    """The VM's memslots, and host-side reads and writes of guest RAM through them."""

    def __init__(self) -> None:
        self.slots: dict[int, Memslot] = {}
        self.ipa_bits = 40  # KVM_VM_TYPE_ARM_IPA_SIZE 0: the default 40-bit IPA space
        self._last: Memslot | None = None  # the slot of the last lookup: accesses cluster
        self._snapshot: tuple[Memslot, ...] | None = None  # the slots as of their last change

    def set_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                   userspace: bytearray | memoryview | None, flags: int = 0) -> None:
        """Create, delete (size 0) or change the flags of a slot, with Linux's checks."""
        if flags & ~KVM_MEM_VALID_FLAGS:
            raise KvmError(EINVAL, f"memslot {slot}: unknown flags {flags:#x}")
        if not 0 <= slot < KVM_USER_MEM_SLOTS:
            raise KvmError(EINVAL, f"memslot {slot}: slot must be in 0..{KVM_USER_MEM_SLOTS - 1}")
        if guest_phys_addr % PAGE_SIZE or memory_size % PAGE_SIZE or memory_size < 0:
            raise KvmError(EINVAL, f"memslot {slot}: address {guest_phys_addr:#x} and size "
                                   f"{memory_size:#x} must be page aligned")
        if guest_phys_addr < 0:
            raise KvmError(EINVAL, f"memslot {slot}: negative guest address {guest_phys_addr:#x}")
        old = self.slots.get(slot)
        if memory_size == 0:
            if old is None:
                raise KvmError(EINVAL, f"memslot {slot}: deleting a slot that does not exist")
            del self.slots[slot]
            self._last = self._snapshot = None
            return
        view = _user_buffer(slot, userspace, memory_size)
        if old is not None:
            if old.memory_size != memory_size or _address(old.buffer) != _address(view):
                raise KvmError(EINVAL, f"memslot {slot}: only flags or the address may change")
            if (old.flags ^ flags) & KVM_MEM_READONLY:
                raise KvmError(EINVAL, f"memslot {slot}: KVM_MEM_READONLY cannot be toggled")
            if old.guest_phys_addr == guest_phys_addr and old.flags == flags:
                return  # nothing to change: the slot and its dirty log stay as they are
        for other in self.slots.values():
            if other.slot != slot and guest_phys_addr < other.end and other.guest_phys_addr < guest_phys_addr + memory_size:
                raise KvmError(EEXIST, f"memslot {slot}: overlaps memslot {other.slot}")
        if guest_phys_addr + memory_size > 1 << self.ipa_bits:  # kvm_arch_prepare_memory_region
            raise KvmError(EFAULT, f"memslot {slot}: ends past the VM's {self.ipa_bits}-bit IPA space")
        new = Memslot(slot, guest_phys_addr, memory_size, flags, view[:memory_size])
        if old is not None and old.flags & flags & KVM_MEM_LOG_DIRTY_PAGES:
            new.dirty_pages = old.dirty_pages  # kvm_prepare_memory_region keeps the old dirty bitmap
        self.slots[slot] = new
        self._last = self._snapshot = None

    def find(self, gpa: int, size: int = 1) -> Memslot | None:
        """The slot holding all of [gpa, gpa+size), if one does."""
        last = self._last
        if last is not None and last.guest_phys_addr <= gpa and gpa + size <= last.end:
            return last
        for s in self.slots.values():
            if s.contains(gpa, size):
                self._last = s
                return s
        return None

    def read(self, gpa: int, size: int) -> bytes | None:
        """kvm_read_guest: the bytes, or None where no slot backs them (read-only slots read)."""
        s = self.find(gpa, size)
        if s is None:
            return None
        off = gpa - s.guest_phys_addr
        return bytes(s.buffer[off:off + size])

    def write(self, gpa: int, data: bytes) -> bool:
        """kvm_write_guest: False (nothing written) where no writable slot backs the range."""
        s = self.find(gpa, len(data))
        if s is None or s.readonly:
            return False
        off = gpa - s.guest_phys_addr
        s.buffer[off:off + len(data)] = data
        if s.flags & KVM_MEM_LOG_DIRTY_PAGES:
            s.mark_dirty(off, len(data))
        return True

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's dirty bitmap (bit i of the little-endian u64 array = page
        i), then clear it and write-protect the slot again. ENOENT when the slot does not log."""
        if not 0 <= slot < KVM_USER_MEM_SLOTS:
            raise KvmError(EINVAL, f"memslot {slot}: slot must be in 0..{KVM_USER_MEM_SLOTS - 1}")
        s = self.slots.get(slot)
        if s is None or not s.dirty_logging:
            raise KvmError(ENOENT, f"memslot {slot}: no dirty log (KVM_MEM_LOG_DIRTY_PAGES not set)")
        npages = s.memory_size // PAGE_SIZE
        bitmap = bytearray((npages + 63) // 64 * 8)
        for page in s.dirty_pages:
            bitmap[page >> 3] |= 1 << (page & 7)
        s.dirty_pages = set()
        s.log_generation = next(_generations)
        self._snapshot = None
        return bytes(bitmap)

    def snapshot(self) -> tuple[Memslot, ...]:
        """The slots; the same tuple until a slot is created, deleted or changed, or a dirty log
        is read (which write-protects its slot again): a backend that mapped these need not look
        again while it gets the same object."""
        if self._snapshot is None:
            self._snapshot = tuple(self.slots.values())
        return self._snapshot

    def writable_page(self, gpa: int) -> bool:
        """gfn_to_hva succeeds for writing: the page is in a writable slot."""
        s = self.find(gpa - gpa % PAGE_SIZE, PAGE_SIZE)
        return s is not None and not s.readonly
