"""The shipped Linux guest files and small readers for them (gzip, the Image, newc cpio, Kconfig)."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINUX_IMAGES = Path(str(files("pvtime") / "images" / "linux"))
FRAGMENT = REPO / "guests" / "linux" / "pvtime.config"


@cache
def manifest() -> dict:
    return json.loads((LINUX_IMAGES / "manifest.json").read_text())


@cache
def kernel_image() -> bytes:
    """The raw arm64 Image (shipped gzipped)."""
    return gzip.decompress((LINUX_IMAGES / "Image.gz").read_bytes())


@cache
def initramfs() -> bytes:
    """The uncompressed newc archive."""
    return gzip.decompress((LINUX_IMAGES / "initramfs.cpio.gz").read_bytes())


_SET = re.compile(r"^(CONFIG_\w+)=(.*)$", re.M)
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$", re.M)


def parse_kconfig(text: str) -> dict[str, str]:
    """{option: value} of a .config or fragment; `# CONFIG_X is not set` reads as "n"."""
    options = {m[1]: "n" for m in _UNSET.finditer(text)}
    options.update((m[1], m[2]) for m in _SET.finditer(text))
    return options


@dataclass(frozen=True)
class CpioMember:
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes


def parse_newc(archive: bytes) -> list[CpioMember]:
    """The members of a newc ("070701") cpio up to its TRAILER!!!; ValueError if malformed
    (Documentation/driver-api/early-userspace/buffer-format.rst)."""
    members: list[CpioMember] = []
    pos = 0
    while True:
        header = archive[pos:pos + 110]
        if len(header) < 110 or header[:6] != b"070701":
            raise ValueError(f"no newc header at offset {pos}")
        f = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _check = f
        name_end = pos + 110 + namesize
        if archive[name_end - 1] != 0:
            raise ValueError(f"member name at offset {pos} is not NUL-terminated")
        name = archive[pos + 110:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data = archive[data_start:data_start + size]
        if len(data) != size:
            raise ValueError(f"member {name!r} is truncated")
        pos = data_start + size + (-(data_start + size) % 4)
        if name == "TRAILER!!!":
            return members
        members.append(CpioMember(name, ino, mode, uid, gid, nlink, mtime, (rmaj, rmin), data))
