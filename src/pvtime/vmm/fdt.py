"""A flattened device tree (DTB) writer, as the Devicetree Specification v0.4 (chapter 5) lays one out.

A blob is a 40-byte header, the memory reservation block (empty here: one terminating entry), the
structure block (FDT_BEGIN_NODE name, FDT_PROP len/nameoff/value, FDT_END_NODE, FDT_END tokens,
big-endian, each padded to 4 bytes) and the strings block (property names, each once). The writer
checks what a reader would refuse -- unbalanced nodes, a property outside a node or after a
child node, a duplicate name -- and raises `FdtError` naming it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

FDT_MAGIC = 0xD00DFEED
FDT_VERSION = 17
FDT_LAST_COMP_VERSION = 16
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_END = 9
_HEADER = struct.Struct(">10I")


class FdtError(ValueError):
    """A device tree that a reader would refuse; says what was wrong."""


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


class FdtWriter:
    """Build a tree depth-first: `begin_node`, its properties, its children, `end_node`; then `finish`."""

    def __init__(self) -> None:
        self._struct = bytearray()
        self._strings = bytearray()
        self._offsets: dict[str, int] = {}
        self._path: list[str] = []
        self._names: list[set[str]] = []  # per open node: its properties' and children's names
        self._has_child: list[bool] = []

    def begin_node(self, name: str) -> None:
        """Open a node (the root is the empty name, and must come first)."""
        if not self._path and self._struct:
            raise FdtError(f"node {name!r}: the tree has one root, already closed")
        if self._path:
            if not name:
                raise FdtError(f"{self.path()}: a child node needs a name")
            self._claim(name, "node")
            self._has_child[-1] = True
        elif name:
            raise FdtError(f"the root node has the empty name, got {name!r}")
        self._struct += struct.pack(">I", FDT_BEGIN_NODE) + _pad4(name.encode() + b"\0")
        self._path.append(name)
        self._names.append(set())
        self._has_child.append(False)

    def end_node(self) -> None:
        """Close the innermost open node."""
        if not self._path:
            raise FdtError("end_node with no node open")
        self._struct += struct.pack(">I", FDT_END_NODE)
        self._path.pop()
        self._names.pop()
        self._has_child.pop()

    def prop(self, name: str, value: bytes = b"") -> None:
        """A property with raw bytes (empty: a boolean property such as `interrupt-controller`)."""
        if not self._path:
            raise FdtError(f"property {name!r} outside any node")
        if self._has_child[-1]:
            raise FdtError(f"{self.path()}: property {name!r} after a child node (properties come first)")
        self._claim(name, "property")
        off = self._offsets.get(name)
        if off is None:
            off = self._offsets[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        self._struct += struct.pack(">III", FDT_PROP, len(value), off) + _pad4(value)

    def prop_u32(self, name: str, *cells: int) -> None:
        """A property of 32-bit cells (`reg`, `interrupts`, `#address-cells`, a phandle...)."""
        for c in cells:
            if not 0 <= c <= 0xFFFF_FFFF:
                raise FdtError(f"{self.path()}: {name} cell {c:#x} does not fit 32 bits")
        self.prop(name, struct.pack(f">{len(cells)}I", *cells))

    def prop_u64(self, name: str, *values: int) -> None:
        """A property of 64-bit values, each as two cells (addresses and sizes with 2 cells)."""
        for v in values:
            if not 0 <= v < 1 << 64:
                raise FdtError(f"{self.path()}: {name} value {v:#x} does not fit 64 bits")
        self.prop(name, struct.pack(f">{len(values)}Q", *values))

    def prop_str(self, name: str, *strings: str) -> None:
        """A string, or a string list (`compatible`), each NUL-terminated."""
        for s in strings:
            if "\0" in s:
                raise FdtError(f"{self.path()}: {name} string {s!r} holds a NUL")
        self.prop(name, b"".join(s.encode() + b"\0" for s in strings))

    def path(self) -> str:
        """The path of the innermost open node ("/" for the root)."""
        return "/" + "/".join(self._path[1:])

    def finish(self, *, boot_cpuid: int = 0, reserve: Iterable[tuple[int, int]] = ()) -> bytes:
        """The blob; every node must be closed. `reserve` lists (address, size) memory reservations."""
        if self._path:
            raise FdtError(f"{self.path()}: node not closed")
        if not self._struct:
            raise FdtError("an empty tree: begin with the root node")
        rsv = b"".join(struct.pack(">QQ", a, s) for a, s in reserve) + bytes(16)
        structure = bytes(self._struct) + struct.pack(">I", FDT_END)
        off_rsv = _HEADER.size + (-_HEADER.size % 8)
        off_struct = off_rsv + len(rsv)
        off_strings = off_struct + len(structure)
        total = off_strings + len(self._strings)
        header = _HEADER.pack(FDT_MAGIC, total, off_struct, off_strings, off_rsv, FDT_VERSION,
                              FDT_LAST_COMP_VERSION, boot_cpuid, len(self._strings), len(structure))
        return header + bytes(off_rsv - _HEADER.size) + rsv + structure + bytes(self._strings)

    def _claim(self, name: str, what: str) -> None:
        names = self._names[-1]
        if name in names:
            raise FdtError(f"{self.path()}: duplicate {what} name {name!r}")
        names.add(name)
