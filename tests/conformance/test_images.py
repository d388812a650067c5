"""The guest images shipped in the package are exactly what their sources build to.

Rebuilds each program of guests/build.py into a temporary directory with the pinned zig cc and
compares the bytes with src/pvtime/images/<name>.elf. After editing anything under guests/, run
`python guests/build.py` and commit the images with the sources.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

pytest.importorskip("ziglang", reason="building guests needs the 'ziglang' package (extra: guests)")

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "src" / "pvtime" / "images"

RAM_BASE = 0x4000_0000
RAM_MIN_SIZE = 16 << 20
LINK_ADDRESS = 0x4008_0000


def _load_build(path: Path):
    spec = importlib.util.spec_from_file_location(f"guests_build_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build(REPO / "guests" / "build.py")


@pytest.mark.parametrize("name", build.PROGRAMS)
def test_shipped_image_matches_its_sources(name: str, tmp_path: Path) -> None:
    shipped = IMAGES / f"{name}.elf"
    assert shipped.is_file(), f"{shipped} is missing: run `python guests/build.py`"
    built = build.build(name, tmp_path)
    assert built.read_bytes() == shipped.read_bytes(), (
        f"{shipped.relative_to(REPO)} does not match guests/ sources: run `python guests/build.py`"
    )


def test_every_shipped_image_is_a_program() -> None:
    assert sorted(p.stem for p in IMAGES.glob("*.elf")) == sorted(build.PROGRAMS)


def test_build_does_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "some" / "other checkout" / "guests"
    shutil.copytree(REPO / "guests", elsewhere, ignore=shutil.ignore_patterns("__pycache__", "build"))
    moved = _load_build(elsewhere / "build.py")
    name = build.PROGRAMS[0]
    out = moved.build(name, tmp_path / "out")
    assert out.read_bytes() == (IMAGES / f"{name}.elf").read_bytes()


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
