"""The arm64 Image boot protocol (Documentation/arch/arm64/booting.rst): header checks and placement."""

import gzip
import struct

import pytest

from pvtime.vmm.arm64_image import SZ_2M, Arm64Image, ImageError, plan


def image(text_offset=0, image_size=0x30_0000, flags=0b1010, magic=0x644D5241, body=4096):
    head = struct.pack("<IIQQQQQQII", 0x14000000, 0, text_offset, image_size, flags, 0, 0, 0, magic, 0)
    return head + bytes(body)


def test_header_fields_are_read_and_a_gzipped_image_is_unpacked():
    raw = image(text_offset=0, image_size=0x30_0000)
    for data in (raw, gzip.compress(raw, mtime=0)):
        img = Arm64Image.parse(data)
        assert (img.text_offset, img.image_size, img.data) == (0, 0x30_0000, raw)


def test_an_image_size_of_zero_means_the_old_text_offset():
    img = Arm64Image.parse(image(text_offset=0, image_size=0, body=8192))
    assert img.text_offset == 0x80000 and img.image_size == 64 + 8192


@pytest.mark.parametrize("data, message", [
    (image(magic=0x12345678), "not an arm64 Image"),
    (image()[:40], "too short"),
    (image(flags=1), "big-endian"),
    (image(text_offset=0x123), "not page-aligned"),
    (b"\x1f\x8b" + b"garbage" * 10, "does not unpack"),
])
def test_what_cannot_boot_is_refused_with_the_reason(data, message):
    with pytest.raises(ImageError, match=message):
        Arm64Image.parse(data)


def test_placement_kernel_then_initrd_then_dtb_each_on_2mib_boundaries():
    img = Arm64Image.parse(image(text_offset=0x8_0000, image_size=0x30_0000))
    lay = plan(img, 0x4000_0000, 64 << 20, initrd_size=5000, dtb_size=2000)
    assert lay.entry == lay.kernel == 0x4008_0000
    assert lay.initrd == (0x4040_0000, 0x4040_0000 + 5000)
    assert lay.dtb == 0x4060_0000 and lay.dtb % SZ_2M == 0  # the DTB never crosses a 2 MiB boundary


def test_ram_too_small_names_what_did_not_fit():
    img = Arm64Image.parse(image(image_size=0x30_0000))
    with pytest.raises(ImageError, match="4 MiB of RAM cannot hold the kernel"):
        plan(img, 0x4000_0000, 4 << 20, initrd_size=1 << 20, dtb_size=2000)
    with pytest.raises(ImageError, match="allows 2097152"):
        plan(img, 0x4000_0000, 64 << 20, initrd_size=0, dtb_size=SZ_2M + 1)
