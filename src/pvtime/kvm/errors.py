"""The error a KVM call raises: an OSError carrying the errno Linux returns."""

from __future__ import annotations

import os

from pvtime.abi.errno import NAMES


class KvmError(OSError):
    """A failed KVM call; `errno` is the value the Linux ioctl would return (negated)."""

    def __init__(self, errno: int, what: str) -> None:
        super().__init__(errno, f"{NAMES.get(errno, os.strerror(errno))}: {what}")
