"""The shipped kernel and initramfs are what guests/linux/ and manifest.json say they are.

Needs no system package: reads the shipped files only. (The full kernel rebuild-and-compare is
`python guests/linux/build.py --check`; the initramfs, which needs only zig, is rebuilt here.)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import stat
import struct
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.guest_linux.shipped import (
    FRAGMENT,
    LINUX_IMAGES,
    REPO,
    initramfs,
    kernel_image,
    manifest,
    parse_kconfig,
    parse_newc,
)

# arch/arm64/kernel/head.S (the Image header) and arch/arm64/include/asm/image.h
HEADER = struct.Struct("<IIQQQQQQII")  # code0 code1 text_offset image_size flags res2 res3 res4 magic res5
ARM64_IMAGE_MAGIC = b"ARM\x64"
MAGIC_OFFSET = 0x38
FLAG_BE, FLAG_PAGE_SIZE_4K = 0x1, 1  # flags bit 0: big-endian; bits 1-2: page size (1 = 4K)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embedded_config(image: bytes) -> str:
    """The .config that CONFIG_IKCONFIG embeds: a gzip blob between the markers that
    kernel/configs.c puts around kernel_config_data ("IKCFG_ST" ... "IKCFG_ED")."""
    start = image.find(b"IKCFG_ST")
    end = image.find(b"IKCFG_ED", start)
    assert start >= 0 and end > start, "no IKCONFIG markers in the Image (CONFIG_IKCONFIG off?)"
    return gzip.decompress(image[start + len(b"IKCFG_ST"):end]).decode()


def test_shipped_files_match_the_manifest() -> None:
    for name, digest in manifest()["files"].items():
        assert sha256((LINUX_IMAGES / name).read_bytes()) == digest, f"{name} is not the file manifest.json names"
    for name in ("Image.gz", "initramfs.cpio.gz", "COPYING", "LICENSES/preferred/GPL-2.0",
                 "LICENSES/exceptions/Linux-syscall-note", "musl-COPYRIGHT", "README.md"):
        assert (LINUX_IMAGES / name).is_file(), f"{name} is not shipped"
    image = kernel_image()
    assert len(image) == manifest()["kernel"]["image_size"]
    assert sha256(image) == manifest()["kernel"]["image_sha256"]


def test_kernel_license_is_gpl2_with_syscall_note() -> None:
    copying = (LINUX_IMAGES / "COPYING").read_text()
    assert "SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note" in copying
    assert "GNU GENERAL PUBLIC LICENSE" in (LINUX_IMAGES / "LICENSES/preferred/GPL-2.0").read_text()
    readme = (LINUX_IMAGES / "README.md").read_text()
    src = manifest()["source"]
    assert f"{src['package']}={src['version']}" in readme, "the README must name the pinned source package"
    assert "guests/linux/pvtime.config" in readme


def test_banner_matches_the_manifest() -> None:
    """init/version-timestamp.c: linux_banner = "Linux version " UTS_RELEASE " (" BY "@" HOST ") ("
    COMPILER ") " UTS_VERSION; the KBUILD_BUILD_* pins must show in it."""
    image = kernel_image()
    start = image.find(b"Linux version ")
    assert start >= 0
    banner = image[start:image.index(b"\n", start)].decode()
    kernel = manifest()["kernel"]
    kbuild = kernel["kbuild"]
    assert banner == kernel["banner"]
    assert banner.startswith(f"Linux version {kernel['release']} "
                             f"({kbuild['KBUILD_BUILD_USER']}@{kbuild['KBUILD_BUILD_HOST']}) ")
    assert banner.endswith(f" #{kbuild['KBUILD_BUILD_VERSION']} SMP {kbuild['KBUILD_BUILD_TIMESTAMP']}")
    assert manifest()["toolchain"]["gcc"] in banner
    assert kernel["release"] == manifest()["source"]["version"].split("-")[0]


def test_embedded_config_has_every_fragment_option() -> None:
    config_text = embedded_config(kernel_image())
    assert sha256(config_text.encode()) == manifest()["kernel"]["config_sha256"]
    config = parse_kconfig(config_text)
    fragment = parse_kconfig(FRAGMENT.read_text())
    assert len(fragment) >= 30
    wrong = {k: (v, config.get(k, "absent")) for k, v in fragment.items() if config.get(k, "n") != v}
    assert not wrong, f"options not as pvtime.config says (fragment, kernel): {wrong}"
    assert config["CONFIG_HZ"] == str(manifest()["kernel"]["hz"])
    assert config["CONFIG_NR_CPUS"] == str(manifest()["kernel"]["nr_cpus"])


def test_shipped_kernel_was_built_from_this_fragment() -> None:
    assert sha256(FRAGMENT.read_bytes()) == manifest()["kernel"]["config_fragment_sha256"], (
        "guests/linux/pvtime.config changed since the kernel was built: run `python guests/linux/build.py`"
    )


def test_shipped_initramfs_was_built_from_this_init_c() -> None:
    source = REPO / "guests" / "linux" / "init.c"
    assert sha256(source.read_bytes()) == manifest()["initramfs"]["source_sha256"], (
        "guests/linux/init.c changed since the initramfs was built: run `python guests/linux/build.py --initramfs-only`"
    )


def test_image_boot_header() -> None:
    """Documentation/arm64/booting.rst: the 64-byte header a boot loader reads."""
    image = kernel_image()
    _code0, code1, text_offset, image_size, flags, *reserved, magic, pe_offset = HEADER.unpack_from(image)
    assert image[MAGIC_OFFSET:MAGIC_OFFSET + 4] == ARM64_IMAGE_MAGIC
    assert magic == struct.unpack("<I", ARM64_IMAGE_MAGIC)[0]
    assert code1 >> 26 == 0b000101, "code1 is `b primary_entry`"
    assert text_offset == 0  # since Linux 5.8 (arch/arm64/Makefile: TEXT_OFFSET removed)
    assert len(image) <= image_size < 64 << 20 and image_size % 4096 == 0, hex(image_size)
    assert flags & FLAG_BE == 0, "little-endian kernel"
    assert (flags >> 1) & 0x3 == FLAG_PAGE_SIZE_4K, "CONFIG_ARM64_4K_PAGES"
    assert reserved == [0, 0, 0]
    assert 0 <= pe_offset < len(image)


def test_initramfs_is_newc_with_a_static_aarch64_init() -> None:
    members = {m.name: m for m in parse_newc(initramfs())}
    assert sorted(members) == manifest()["initramfs"]["members"]
    init = members["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o111 == 0o111, oct(init.mode)
    assert sha256(init.data) == manifest()["initramfs"]["init_sha256"]
    elf = ELFFile(io.BytesIO(init.data))
    assert elf.elfclass == 64 and elf.little_endian
    assert elf["e_machine"] == "EM_AARCH64" and elf["e_type"] == "ET_EXEC"
    kinds = {seg["p_type"] for seg in elf.iter_segments()}
    assert "PT_LOAD" in kinds and not kinds & {"PT_INTERP", "PT_DYNAMIC"}, f"not static: {kinds}"
    console = members["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)  # init/main.c: console_on_rootfs
    assert stat.S_ISDIR(members["proc"].mode) and stat.S_ISDIR(members["dev"].mode)
    for m in members.values():
        assert (m.uid, m.gid, m.mtime) == (0, 0, 0), m.name
    assert list(members) == sorted(members), "members are sorted (parents before children)"


def test_newc_reader_rejects_a_truncated_archive() -> None:
    with pytest.raises(ValueError, match="newc header|truncated"):
        parse_newc(initramfs()[:-200])


def _load_build():
    path = REPO / "guests" / "linux" / "build.py"
    spec = importlib.util.spec_from_file_location("guests_linux_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shipped_initramfs_matches_init_c(tmp_path: Path) -> None:
    """Rebuild /init with the pinned zig cc and repack: the same bytes as shipped."""
    pytest.importorskip("ziglang", reason="building /init needs the 'ziglang' package (extra: guests)")
    build = _load_build()
    init = build.build_init(tmp_path / "init")
    cpio = build.gzip_bytes(build.newc_archive(build.initramfs_entries(init)))
    assert sha256(init) == manifest()["initramfs"]["init_sha256"], (
        "guests/linux/init.c does not build to the shipped /init: run `python guests/linux/build.py --initramfs-only`"
    )
    assert cpio == (LINUX_IMAGES / "initramfs.cpio.gz").read_bytes()
