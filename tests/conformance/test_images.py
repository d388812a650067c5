"""The guest images shipped in the package are exactly what their sources build to.

Rebuilds each program of guests/build.py into a temporary directory with the pinned zig cc and
compares the bytes with src/pvtime/images/<name>.elf and <name>.img. After editing anything under
guests/, run `python guests/build.py` and commit the images with the sources.

The Image (`<name>.img`) is the ELF's loaded bytes with the arm64 boot header at their start
(Linux's Documentation/arch/arm64/booting.rst), and the code holds no absolute address, so it
runs wherever a loader puts it: the build links every program twice and refuses one whose Images
differ.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

pytest.importorskip("ziglang", reason="building guests needs the 'ziglang' package (extra: guests)")

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "src" / "pvtime" / "images"

RAM_BASE = 0x4000_0000
RAM_MIN_SIZE = 16 << 20
LINK_ADDRESS = 0x4020_0000  # RAM base + 2 MiB: QEMU's 1 MiB device tree fits below it
ARM64_IMAGE_MAGIC = b"ARM\x64"
IMAGE_FLAGS = 0b1010  # little-endian, 4 KiB pages, anywhere in physical memory


def _load_build(path: Path):
    spec = importlib.util.spec_from_file_location(f"guests_build_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build(REPO / "guests" / "build.py")


@pytest.mark.parametrize("name", build.PROGRAMS)
def test_shipped_images_match_their_sources(name: str, tmp_path: Path) -> None:
    built = build.build(name, tmp_path)
    for suffix in (".elf", ".img"):
        shipped = IMAGES / f"{name}{suffix}"
        assert shipped.is_file(), f"{shipped} is missing: run `python guests/build.py`"
        assert (tmp_path / f"{name}{suffix}").read_bytes() == shipped.read_bytes(), (
            f"{shipped.relative_to(REPO)} does not match guests/ sources: run `python guests/build.py`"
        )
    assert built == tmp_path / f"{name}.elf"


def test_every_shipped_image_is_a_program() -> None:
    assert sorted(p.name for p in IMAGES.iterdir() if p.suffix in (".elf", ".img")) == sorted(
        f"{n}{s}" for n in build.PROGRAMS for s in (".elf", ".img"))


def test_build_does_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "some" / "other checkout" / "guests"
    shutil.copytree(REPO / "guests", elsewhere, ignore=shutil.ignore_patterns("__pycache__", "build"))
    moved = _load_build(elsewhere / "build.py")
    name = build.PROGRAMS[0]
    out = moved.build(name, tmp_path / "out")
    assert out.read_bytes() == (IMAGES / f"{name}.elf").read_bytes()
    assert out.with_suffix(".img").read_bytes() == (IMAGES / f"{name}.img").read_bytes()


@pytest.mark.parametrize("name", build.PROGRAMS)
def test_image_layout_honours_the_machine_contract(name: str) -> None:
    with open(IMAGES / f"{name}.elf", "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_AARCH64" and elf.little_endian and elf.elfclass == 64
        assert elf["e_entry"] == LINK_ADDRESS
        segments = list(elf.iter_segments())
        assert [s["p_type"] for s in segments] == ["PT_LOAD"] * 3
        for s in segments:
            assert s["p_paddr"] == s["p_vaddr"]
            assert RAM_BASE <= s["p_vaddr"] and s["p_vaddr"] + s["p_memsz"] <= RAM_BASE + RAM_MIN_SIZE
        symbols = {sym.name: sym["st_value"] for sym in elf.get_section_by_name(".symtab").iter_symbols()}
        assert symbols["_start"] == LINK_ADDRESS
        assert "rt_secondary_entry" in symbols
        assert symbols["rt_vectors"] % 0x800 == 0


@pytest.mark.parametrize("name", build.PROGRAMS)
def test_the_image_is_the_elf_with_an_arm64_boot_header(name: str) -> None:
    """booting.rst's header: a branch (code0), text_offset 0, image_size covering BSS and the
    stacks, the flags, the magic; then the ELF's loaded bytes, as they lie in memory."""
    raw = (IMAGES / f"{name}.img").read_bytes()
    code0, _code1, text_offset, image_size, flags = struct.unpack_from("<IIQQQ", raw)
    assert raw[0x38:0x3C] == ARM64_IMAGE_MAGIC
    assert code0 >> 26 == 0b000101  # B: the ELF's entry is the header's first word
    assert text_offset == 0 and flags == IMAGE_FLAGS
    elf_bytes = (IMAGES / f"{name}.elf").read_bytes()
    segments = list(ELFFile(io.BytesIO(elf_bytes)).iter_segments())
    end = max(s["p_vaddr"] + s["p_memsz"] for s in segments)
    assert image_size == end - LINK_ADDRESS >= len(raw)
    for s in segments:
        off = s["p_vaddr"] - LINK_ADDRESS
        assert raw[off:off + s["p_filesz"]] == elf_bytes[s["p_offset"]:s["p_offset"] + s["p_filesz"]]


def test_the_build_refuses_an_absolute_address_in_the_image(tmp_path: Path) -> None:
    """A pointer in initialized data would not be where it points once the Image is loaded
    elsewhere: the second link (at CHECK_LINK_BASE) gives other bytes, and the build names it."""
    guests = tmp_path / "guests"
    shutil.copytree(REPO / "guests", guests, ignore=shutil.ignore_patterns("__pycache__", "build"))
    source = guests / "conformance.c"
    source.write_text(source.read_text()
                      + '\n__attribute__((used)) const char *const absolute_pointer[] = {"somewhere"};\n')
    moved = _load_build(guests / "build.py")
    with pytest.raises(RuntimeError, match=r"not position-independent: .*absolute_pointer\+0x0"):
        moved.build("conformance", tmp_path / "out")
    assert not (tmp_path / "out" / "conformance.elf").exists()
