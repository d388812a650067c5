"""The DTB writer against an independent reader (the `fdt` package) and the Devicetree
Specification's structure rules."""

import struct

import fdt
import pytest

from pvtime.vmm.fdt import FDT_MAGIC, FdtError, FdtWriter


def small_tree() -> bytes:
    w = FdtWriter()
    w.begin_node("")
    w.prop_u32("#address-cells", 2)
    w.prop_str("compatible", "a,b", "c")
    w.begin_node("child@10")
    w.prop("flag")
    w.prop_u64("reg", 0x10, 0x20)
    w.prop_str("compatible", "x")  # a name the strings block already holds
    w.end_node()
    w.end_node()
    return w.finish(reserve=[(0x1000, 0x2000)])


def test_an_independent_reader_sees_every_node_and_property():
    tree = fdt.parse_dtb(small_tree())
    root = tree.get_node("/")
    assert root.get_property("#address-cells").value == 2
    assert list(root.get_property("compatible").data) == ["a,b", "c"]
    child = tree.get_node("/child@10")
    assert child.get_property("flag") is not None
    assert list(child.get_property("reg").data) == [0, 0x10, 0, 0x20]
    assert tree.entries == [{"address": 0x1000, "size": 0x2000}]


def test_header_fields_and_block_alignment():
    blob = small_tree()
    magic, total, off_struct, off_strings, off_rsv, version, last, _cpu, size_strings, size_struct = \
        struct.unpack_from(">10I", blob)
    assert magic == FDT_MAGIC and total == len(blob) and (version, last) == (17, 16)
    assert off_rsv % 8 == 0 and off_struct % 4 == 0  # spec 5.1: alignment of the blocks
    assert off_strings + size_strings == total and off_struct + size_struct == off_strings
    # property names are stored once: "compatible" appears a single time in the strings block
    assert blob[off_strings:].count(b"compatible\0") == 1
    assert blob[off_struct + size_struct - 4:off_struct + size_struct] == b"\0\0\0\x09"  # FDT_END


@pytest.mark.parametrize("build, message", [
    (lambda w: w.prop("x"), "outside any node"),
    (lambda w: (w.begin_node(""), w.begin_node("a"), w.end_node(), w.prop("late")), "after a child node"),
    (lambda w: (w.begin_node(""), w.prop("x"), w.prop("x")), "duplicate property"),
    (lambda w: (w.begin_node(""), w.begin_node("n"), w.end_node(), w.begin_node("n")), "duplicate node"),
    (lambda w: (w.begin_node(""), w.prop_u32("c", 1 << 32)), "does not fit 32 bits"),
    (lambda w: (w.begin_node(""), w.prop_str("s", "a\0b")), "holds a NUL"),
    (lambda w: w.begin_node("root"), "empty name"),
    (lambda w: w.end_node(), "no node open"),
])
def test_what_a_reader_would_refuse_is_an_error_naming_it(build, message):
    with pytest.raises(FdtError, match=message):
        build(FdtWriter())


def test_an_unclosed_tree_is_not_finished():
    w = FdtWriter()
    w.begin_node("")
    w.begin_node("open")
    with pytest.raises(FdtError, match="/open: node not closed"):
        w.finish()
