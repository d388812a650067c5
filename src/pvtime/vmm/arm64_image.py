"""Loading a Linux arm64 kernel as a boot loader does (Linux's Documentation/arch/arm64/booting.rst).

The Image starts with a 64-byte header: code0, code1, text_offset, image_size, flags, three
reserved words, the magic "ARM\\x64" at 0x38 and the PE header offset. The kernel goes
`text_offset` bytes above a 2 MiB-aligned base, and needs `image_size` bytes there (its BSS
included). The initramfs and the device tree go above it: the DTB 8-byte aligned, at most 2 MiB and
not crossing a 2 MiB boundary. The boot CPU starts at the Image's first byte with x0 = the DTB's
physical address and x1-x3 = 0, MMU off, at EL1 with interrupts masked (KVM's reset state). A
gzipped Image is unpacked first, as QEMU does.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass

ARM64_IMAGE_MAGIC = 0x644D5241  # "ARM\x64"
_HEADER = struct.Struct("<IIQQQQQQII")
HEADER_SIZE = _HEADER.size  # 64
SZ_2M = 2 * 1024 * 1024
DTB_MAX = SZ_2M
OLD_TEXT_OFFSET = 0x80000  # image_size 0: a kernel older than 3.17, which assumed this offset
FLAG_BE = 1 << 0
MAX_UNPACKED = 1 << 30  # a gzipped Image unpacks to at most this (a guard against a gzip bomb)


class ImageError(ValueError):
    """A kernel, initramfs or layout that cannot be booted; says why."""


@dataclass(frozen=True)
class Arm64Image:
    """An arm64 Image's header fields and bytes."""

    data: bytes
    text_offset: int
    image_size: int  # bytes the kernel needs from its load address, BSS included
    flags: int

    @classmethod
    def parse(cls, raw: bytes) -> Arm64Image:
        """Check the header (unpacking a gzipped Image first); ImageError names what is wrong."""
        if raw[:2] == b"\x1f\x8b":
            try:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                raw = d.decompress(raw, MAX_UNPACKED)
            except (zlib.error, gzip.BadGzipFile) as err:
                raise ImageError(f"the gzipped kernel does not unpack: {err}") from None
            if d.unconsumed_tail:
                raise ImageError(f"the gzipped kernel unpacks to more than {MAX_UNPACKED >> 20} MiB")
        if len(raw) < HEADER_SIZE:
            raise ImageError(f"{len(raw)} bytes: too short for an arm64 Image header ({HEADER_SIZE})")
        _c0, _c1, text_offset, image_size, flags, _r2, _r3, _r4, magic, _r5 = _HEADER.unpack_from(raw)
        if magic != ARM64_IMAGE_MAGIC:
            raise ImageError(f"not an arm64 Image: magic {magic:#010x} at 0x38, expected "
                             f"{ARM64_IMAGE_MAGIC:#010x} (\"ARM\\x64\")")
        if image_size == 0:
            text_offset = OLD_TEXT_OFFSET
        if flags & FLAG_BE:
            raise ImageError("a big-endian kernel (header flags bit 0): pvtime's vCPUs are little-endian")
        if text_offset % 4096:
            raise ImageError(f"text_offset {text_offset:#x} is not page-aligned")
        return cls(raw, text_offset, max(image_size, len(raw)), flags)


@dataclass(frozen=True)
class BootLayout:
    """Where the kernel, the initramfs and the DTB go in guest RAM."""

    kernel: int
    kernel_end: int
    initrd: tuple[int, int] | None
    dtb: int

    @property
    def entry(self) -> int:
        """The boot CPU's first instruction: the Image's first byte."""
        return self.kernel


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def plan(image: Arm64Image, ram_base: int, ram_size: int, *, initrd_size: int, dtb_size: int) -> BootLayout:
    """Place the kernel at the start of RAM (2 MiB-aligned base + text_offset), the initramfs
    2 MiB-aligned above it, and the DTB on the next 2 MiB boundary above that."""
    if ram_base % SZ_2M:
        raise ImageError(f"RAM at {ram_base:#x} is not 2 MiB-aligned")
    if dtb_size > DTB_MAX:
        raise ImageError(f"a device tree of {dtb_size} bytes: the boot protocol allows {DTB_MAX}")
    kernel = ram_base + image.text_offset
    kernel_end = kernel + image.image_size
    cursor = _align_up(kernel_end, SZ_2M)
    initrd = None
    if initrd_size:
        initrd = (cursor, cursor + initrd_size)
        cursor = _align_up(initrd[1], SZ_2M)
    dtb = cursor
    need = dtb + dtb_size - ram_base
    if need > ram_size:
        raise ImageError(f"{ram_size >> 20} MiB of RAM cannot hold the kernel ({image.image_size} bytes "
                         f"from +{image.text_offset:#x}), the initramfs ({initrd_size} bytes) and the "
                         f"device tree: they need {-(-need // (1 << 20))} MiB")
    return BootLayout(kernel, kernel_end, initrd, dtb)
