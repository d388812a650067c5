"""Arm semihosting served by the VMM, as QEMU's `-semihosting` does (a debug facility).

The guest executes `HLT #0xF000` with the operation in w0 and a parameter in x1; the hypervisor
reports it as a `SemihostingExit` with the PC already past the HLT, and the VMM answers in x0.
With the MMU off (the machine contract) guest addresses are physical. Implemented operations:

- SYS_WRITEC (0x03): x1 points to one byte, written to the console;
- SYS_WRITE0 (0x04): x1 points to a NUL-terminated string, written to the console;
- SYS_EXIT (0x18) and SYS_EXIT_EXTENDED (0x20): on AArch64 x1 points to {u64 reason, u64 subcode};
  reason ADP_Stopped_ApplicationExit (0x20026) exits with status `subcode`, any other reason with
  status 1 (QEMU's choice).

Any other operation answers x0 = -1 (the guest can tell it is not supported).
"""

from __future__ import annotations

from pvtime.abi.widths import U64

from collections.abc import Callable
from dataclasses import dataclass

SYS_WRITEC = 0x03
SYS_WRITE0 = 0x04
SYS_EXIT = 0x18
SYS_EXIT_EXTENDED = 0x20
ADP_STOPPED_APPLICATION_EXIT = 0x20026
_MAX_STRING = 1 << 16  # a SYS_WRITE0 string longer than this is cut (a missing NUL would run on)

ReadGuest = Callable[[int, int], bytes | None]


@dataclass(frozen=True)
class SemihostingResult:
    """What the VMM does for one call: console bytes, x0, and an exit status if the guest exits."""

    console: bytes = b""
    x0: int | None = None
    exit_status: int | None = None
    error: str | None = None  # a parameter the VMM could not read


def serve(op: int, param: int, read: ReadGuest) -> SemihostingResult:
    """Serve one call; `read(gpa, size)` reads guest memory (None where there is none)."""
    if op == SYS_WRITEC:
        byte = read(param, 1)
        if byte is None:
            return SemihostingResult(error=f"SYS_WRITEC: no guest memory at {param:#x}")
        return SemihostingResult(console=byte)
    if op == SYS_WRITE0:
        out = bytearray()
        addr = param
        while len(out) < _MAX_STRING:
            chunk = read(addr, 1)
            if chunk is None:
                return SemihostingResult(console=bytes(out), error=f"SYS_WRITE0: string at {param:#x} runs "
                                                                   f"out of guest memory at {addr:#x}")
            if chunk == b"\0":
                break
            out += chunk
            addr += 1
        return SemihostingResult(console=bytes(out))
    if op in (SYS_EXIT, SYS_EXIT_EXTENDED):
        block = read(param, 16)
        if block is None:
            return SemihostingResult(error=f"SYS_EXIT: no {{reason, subcode}} block at {param:#x}")
        reason = int.from_bytes(block[:8], "little")
        subcode = int.from_bytes(block[8:], "little")
        status = (subcode & 0xFF) if reason == ADP_STOPPED_APPLICATION_EXIT else 1
        return SemihostingResult(exit_status=status)
    return SemihostingResult(x0=U64)
