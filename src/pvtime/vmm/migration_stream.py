"""The migration stream: versioned, checksummed parts that carry a VM from one host to another.

A migration is a sequence of *parts*. Pre-copy rounds send parts of memory pages while the source
VM runs; the final part (sent with the source paused) carries the last dirty pages and the CPU,
timer and attribute state. Every part is self-contained and checked on its own::

    magic    8 bytes   b"PVTMIGR\\n"
    version  u32       STREAM_VERSION (a reader refuses any other)
    length   u64       bytes of the sections that follow
    sections           tag (4 ASCII bytes) | u64 length | payload, in order:
                         META  JSON: migration id, part index, final flag, the machine config
                         PAGE  u32 slot | u32 count | count x u64 page index | count pages
                         STAT  JSON (final part only): vCPUs, registers, timers, attributes
    sha256   32 bytes  over everything before it

All integers are little-endian. A reader refuses a part that is truncated, carries trailing bytes,
fails the checksum, has an unknown section, or was written by another version, with a
:class:`MigrationError` naming what was wrong; nothing is applied from a refused part.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from pvtime.abi.uapi import PAGE_SIZE

MAGIC = b"PVTMIGR\n"
STREAM_VERSION = 1
_HEAD = struct.Struct("<8sIQ")
_SECTION = struct.Struct("<4sQ")
_PAGES = struct.Struct("<II")
_DIGEST = 32
# A part's pages are split into sections of at most this many, so no section is huge.
PAGES_PER_SECTION = 256


class MigrationError(ValueError):
    """A stream that cannot be restored, or a migration that cannot be done; says why."""


@dataclass
class Part:
    """One decoded part: its metadata, pages by (slot, page index), and the final state if any."""

    meta: dict[str, Any]
    pages: dict[tuple[int, int], bytes] = field(default_factory=dict)
    state: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        """The last part: it carries the CPU state."""
        return self.state is not None


def encode(part: Part) -> bytes:
    """The bytes of `part` (pages grouped per slot, in page order: the output is deterministic)."""
    body = bytearray()
    _section(body, b"META", _json(part.meta))
    by_slot: dict[int, list[int]] = {}
    for slot, index in sorted(part.pages):
        by_slot.setdefault(slot, []).append(index)
    for slot, indexes in by_slot.items():
        for start in range(0, len(indexes), PAGES_PER_SECTION):
            chunk = indexes[start:start + PAGES_PER_SECTION]
            payload = bytearray(_PAGES.pack(slot, len(chunk)))
            payload += struct.pack(f"<{len(chunk)}Q", *chunk)
            for index in chunk:
                data = part.pages[(slot, index)]
                if len(data) != PAGE_SIZE:
                    raise ValueError(f"page {slot}:{index} is {len(data)} bytes, not {PAGE_SIZE}")
                payload += data
            _section(body, b"PAGE", bytes(payload))
    if part.state is not None:
        _section(body, b"STAT", _json(part.state))
    out = bytearray(_HEAD.pack(MAGIC, STREAM_VERSION, len(body)))
    out += body
    out += hashlib.sha256(out).digest()
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> Part:
    """Check and decode one part; MigrationError names the first problem found."""
    data = memoryview(data).cast("B")
    if len(data) < _HEAD.size:
        raise MigrationError(f"stream truncated: {len(data)} bytes, a part header needs {_HEAD.size}")
    magic, version, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise MigrationError(f"not a pvtime migration stream (magic {bytes(magic)!r})")
    if version != STREAM_VERSION:
        raise MigrationError(f"stream version {version} does not match this pvtime's version {STREAM_VERSION}")
    total = _HEAD.size + length + _DIGEST
    if len(data) < total:
        raise MigrationError(f"stream truncated: {len(data)} of {total} bytes")
    if len(data) > total:
        raise MigrationError(f"{len(data) - total} trailing bytes after the part")
    if hashlib.sha256(data[:total - _DIGEST]).digest() != bytes(data[total - _DIGEST:]):
        raise MigrationError("checksum mismatch: the stream is corrupt")
    part: Part | None = None
    pos, end = _HEAD.size, _HEAD.size + length
    while pos < end:
        if end - pos < _SECTION.size:
            raise MigrationError(f"section header truncated at byte {pos}")
        tag, size = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        if size > end - pos:
            raise MigrationError(f"section {tag!r} at byte {pos} overruns the part")
        payload = data[pos:pos + size]
        pos += size
        if tag == b"META":
            if part is not None:
                raise MigrationError("two META sections in one part")
            part = Part(_unjson(payload, "META"))
        elif part is None:
            raise MigrationError(f"section {tag!r} before META")
        elif tag == b"PAGE":
            _pages(part, payload)
        elif tag == b"STAT":
            part.state = _unjson(payload, "STAT")
        else:
            raise MigrationError(f"unknown section {tag!r}")
    if part is None:
        raise MigrationError("part without a META section")
    return part


def _section(body: bytearray, tag: bytes, payload: bytes) -> None:
    body += _SECTION.pack(tag, len(payload))
    body += payload


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _unjson(payload: memoryview, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(payload).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MigrationError(f"{what} section is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise MigrationError(f"{what} section is not a JSON object")
    return value


def _pages(part: Part, payload: memoryview) -> None:
    if len(payload) < _PAGES.size:
        raise MigrationError("PAGE section truncated")
    slot, count = _PAGES.unpack_from(payload)
    need = _PAGES.size + count * (8 + PAGE_SIZE)
    if len(payload) != need:
        raise MigrationError(f"PAGE section of {count} pages is {len(payload)} bytes, expected {need}")
    indexes = struct.unpack_from(f"<{count}Q", payload, _PAGES.size)
    base = _PAGES.size + 8 * count
    for i, index in enumerate(indexes):
        part.pages[(slot, index)] = bytes(payload[base + i * PAGE_SIZE:base + (i + 1) * PAGE_SIZE])
