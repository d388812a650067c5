"""The migration stream: versioned, checksummed parts, bound to one migration, that carry a VM from
one host to another.

A migration is a sequence of *parts*. Pre-copy rounds send parts of memory pages while the source
VM runs; the final part (sent with the source paused) carries the last dirty pages and the CPU,
timer and attribute state. Every part is checked on its own, and against the part before it::

    magic    8 bytes   b"PVTMIGR\\n"
    version  u32       STREAM_VERSION (a reader refuses any other)
    length   u64       bytes of the sections that follow
    sections           tag (4 ASCII bytes) | u64 length | payload, in order:
                         BIND  always first, payload exactly 64 bytes:
                                 nonce     16 bytes  random, chosen by the sender for this stream
                                 index     u64       this part's place in the stream, from 0
                                 count     u64       final part: the number of parts in the stream,
                                                     this one included (the seal); 0 in all others
                                 previous  32 bytes  the previous part's sha256 (below); part 0:
                                                     CHAIN_START (32 zero bytes)
                         META  JSON: migration label, part index, final flag, the machine config
                         PAGE  u32 slot | u32 count | count x u64 page index | count pages
                         STAT  JSON (final part only): vCPUs, registers, timers, attributes
    sha256   32 bytes  over everything before it (BIND included, so the chain covers every byte
                       of every earlier part)

All integers are little-endian. :func:`decode` refuses a part that is truncated, carries trailing
bytes, fails the checksum, lacks its BIND section or has an unknown one, or was written by another
version, with a :class:`MigrationError` naming what was wrong; nothing is applied from a refused
part. The receiver (pvtime.vmm.migration) then holds the part to its stream: the nonce of part 0,
the next index, the previous part's checksum, and on the final part a seal equal to the parts
received -- so parts of another migration (even one with the same label, of another VM), a
part altered and re-checksummed (the next part's `previous` no longer matches), dropped, repeated
or reordered, or a stream cut short, are refused. The checksums are not a MAC: they catch faults
and mix-ups, not a forger on the wire, who can rewrite the whole chain (that needs an
authenticated transport).

**What the simulated link charges.** The BIND section (:data:`FRAMING_BYTES`, 76 bytes with its
section header) is framing, like the transport headers the simulated bandwidth does not count
either: :func:`charged_bytes` is a part's size without it, and is what a simulation turns into
transfer time and reports as bytes moved. So the nonce -- a wall-clock-like fact, different on
every run -- never changes a result: the charged bytes depend only on the VM's pages and state,
and the nonce itself appears in no result, trace or error message.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from pvtime.abi.uapi import PAGE_SIZE

MAGIC = b"PVTMIGR\n"
STREAM_VERSION = 2  # 2: the BIND section
_HEAD = struct.Struct("<8sIQ")
_SECTION = struct.Struct("<4sQ")
_PAGES = struct.Struct("<II")
NONCE_SIZE = 16
DIGEST_SIZE = 32
_BIND = struct.Struct(f"<{NONCE_SIZE}sQQ{DIGEST_SIZE}s")
CHAIN_START = bytes(DIGEST_SIZE)  # what part 0's `previous` holds
FRAMING_BYTES = _SECTION.size + _BIND.size  # the BIND section: not charged by the simulated link
# A part's pages are split into sections of at most this many, so no section is huge.
PAGES_PER_SECTION = 256


class MigrationError(ValueError):
    """A stream that cannot be restored, or a migration that cannot be done; says why."""


@dataclass(frozen=True)
class Binding:
    """A part's BIND section: which stream it belongs to and where in it (see the module doc)."""

    nonce: bytes
    index: int
    count: int  # the seal: the number of parts, in the final part; 0 in every other part
    previous: bytes  # the previous part's sha256, CHAIN_START for part 0

    @staticmethod
    def new_nonce() -> bytes:
        """A fresh random nonce for one stream (from the OS's CSPRNG)."""
        return secrets.token_bytes(NONCE_SIZE)


@dataclass
class Part:
    """One decoded part: its binding, metadata, pages by (slot, page index), and the final state.

    `digest` is the part's sha256 as decoded (the next part's `binding.previous`); it is set by
    :func:`decode` and not used by :func:`encode`.
    """

    meta: dict[str, Any]
    pages: dict[tuple[int, int], bytes] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    binding: Binding | None = None
    digest: bytes = b""

    @property
    def final(self) -> bool:
        """The last part: it carries the CPU state."""
        return self.state is not None


def encode(part: Part) -> bytes:
    """The bytes of `part` (pages grouped per slot, in page order: the output is deterministic)."""
    b = part.binding
    if b is None:
        raise ValueError("a part is encoded with its binding (Sender binds its parts)")
    if len(b.nonce) != NONCE_SIZE or len(b.previous) != DIGEST_SIZE:
        raise ValueError(f"binding of {len(b.nonce)}-byte nonce and {len(b.previous)}-byte previous digest, "
                         f"expected {NONCE_SIZE} and {DIGEST_SIZE}")
    body = bytearray()
    _section(body, b"BIND", _BIND.pack(b.nonce, b.index, b.count, b.previous))
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


def charged_bytes(data: bytes | bytearray | memoryview) -> int:
    """The bytes of an encoded part that a simulated link charges: all but its BIND framing."""
    return len(data) - FRAMING_BYTES


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """An encoded part's sha256 (its last bytes): what the next part's binding chains from."""
    return bytes(memoryview(data)[-DIGEST_SIZE:])


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
    total = _HEAD.size + length + DIGEST_SIZE
    if len(data) < total:
        raise MigrationError(f"stream truncated: {len(data)} of {total} bytes")
    if len(data) > total:
        raise MigrationError(f"{len(data) - total} trailing bytes after the part")
    if hashlib.sha256(data[:total - DIGEST_SIZE]).digest() != bytes(data[total - DIGEST_SIZE:]):
        raise MigrationError("checksum mismatch: the stream is corrupt")
    binding: Binding | None = None
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
        if binding is None:
            if tag != b"BIND":
                raise MigrationError(f"section {tag!r} where the BIND section must come first: unbound part")
            if size != _BIND.size:
                raise MigrationError(f"BIND section of {size} bytes, expected {_BIND.size}")
            binding = Binding(*_BIND.unpack(payload))
        elif tag == b"BIND":
            raise MigrationError("two BIND sections in one part")
        elif tag == b"META":
            if part is not None:
                raise MigrationError("two META sections in one part")
            part = Part(_unjson(payload, "META"), binding=binding, digest=digest(data))
        elif part is None:
            raise MigrationError(f"section {tag!r} before META")
        elif tag == b"PAGE":
            _pages(part, payload)
        elif tag == b"STAT":
            if part.state is not None:
                raise MigrationError("two STAT sections in one part")
            part.state = _unjson(payload, "STAT")
        else:
            raise MigrationError(f"unknown section {tag!r}")
    if binding is None:
        raise MigrationError("part without a BIND section: unbound part")
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
