"""Shared-memory record layouts: the stolen-time record (DEN0057A), the LPT record (2020 RFC), and
KVM's coalesced-MMIO ring (include/uapi/linux/kvm.h).

Both are little-endian and 64-byte aligned (docs/semantics.md sections 2 and 5).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

STEAL_RECORD_SIZE = 64
STEAL_RECORD_ALIGN = 64
STEAL_TIME_OFFSET = 8  # offset of the u64 stolen_time field
_STEAL = struct.Struct("<IIQ48x")

LPT_RECORD_SIZE = 48
LPT_RECORD_ALIGN = 64
LPT_SEQUENCE_OFFSET = 8
_LPT = struct.Struct("<IIQIIQQII")

# struct kvm_coalesced_mmio_ring: u32 first (the VMM's next entry to read), u32 last (KVM's next
# free one), then struct kvm_coalesced_mmio entries: u64 phys_addr, u32 len, u32 pio, u8 data[8].
COALESCED_RING_HEADER = struct.Struct("<II")
COALESCED_RING_ENTRY = struct.Struct("<QII8s")


class RecordError(ValueError):
    """A record's bytes are not a valid record; the message names the field."""


@dataclass(frozen=True)
class StolenTimeRecord:
    """The 64-byte per-vCPU stolen-time record."""

    revision: int = 0
    attributes: int = 0
    stolen_time: int = 0

    def pack(self) -> bytes:
        """The record's 64 bytes (padding zero)."""
        return _STEAL.pack(self.revision, self.attributes, self.stolen_time)

    @classmethod
    def unpack(cls, data: bytes) -> StolenTimeRecord:
        """Read a record from at least 64 bytes; the padding is not inspected (the guest ignores it)."""
        if len(data) < STEAL_RECORD_SIZE:
            raise RecordError(f"stolen-time record needs {STEAL_RECORD_SIZE} bytes, got {len(data)}")
        revision, attributes, stolen = _STEAL.unpack_from(data)
        return cls(revision, attributes, stolen)

    def validate(self) -> None:
        """Raise RecordError as the Linux guest would refuse the record (revision/attributes != 0)."""
        if self.revision != 0:
            raise RecordError(f"stolen-time record: revision is {self.revision}, expected 0")
        if self.attributes != 0:
            raise RecordError(f"stolen-time record: attributes is {self.attributes}, expected 0")


@dataclass(frozen=True)
class LptRecord:
    """The 48-byte per-VM Live Physical Time record (2020 RFC)."""

    revision: int = 0
    attributes: int = 0
    sequence_number: int = 0
    native_freq: int = 0
    pv_freq: int = 0
    scale_mult: int = 0
    rscale_mult: int = 0
    fracbits: int = 0
    rfracbits: int = 0

    def pack(self) -> bytes:
        """The record's 48 bytes."""
        return _LPT.pack(
            self.revision, self.attributes, self.sequence_number, self.native_freq,
            self.pv_freq, self.scale_mult, self.rscale_mult, self.fracbits, self.rfracbits,
        )

    @classmethod
    def unpack(cls, data: bytes) -> LptRecord:
        """Read a record from at least 48 bytes."""
        if len(data) < LPT_RECORD_SIZE:
            raise RecordError(f"LPT record needs {LPT_RECORD_SIZE} bytes, got {len(data)}")
        return cls(*_LPT.unpack_from(data))

    def validate(self) -> None:
        """Raise RecordError where a guest must refuse the record."""
        if self.revision != 0:
            raise RecordError(f"LPT record: revision is {self.revision}, expected 0")
        if self.attributes != 0:
            raise RecordError(f"LPT record: attributes is {self.attributes}, expected 0")
        if self.sequence_number & 1:
            raise RecordError("LPT record: sequence_number bit 0 is reserved and set")
        if self.native_freq == 0 or self.pv_freq == 0:
            raise RecordError("LPT record: native_freq and pv_freq must be non-zero")
        if not (1 <= self.fracbits <= 63 and 1 <= self.rfracbits <= 63):
            raise RecordError(
                f"LPT record: fracbits {self.fracbits} / rfracbits {self.rfracbits} out of 1..63"
            )
