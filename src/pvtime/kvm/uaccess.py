"""copy_from_user for values the VMM passes by address (attr.addr, reg.addr).

The Python API takes the value itself: an int, or the little-endian bytes at the address. What
cannot be read as an unsigned value of the expected width is EFAULT, as a bad pointer is.
"""

from __future__ import annotations

from pvtime.abi.errno import EFAULT
from pvtime.kvm.errors import KvmError


def read_user(value: object, size: int, what: str) -> int:
    """The u`8*size` at the user address: EFAULT, naming `what`, when it cannot be read."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            data = memoryview(value).tobytes()  # the bytes at the address, whatever the view's item size
        except ValueError:  # a released view: nothing is mapped at that address any more
            raise KvmError(EFAULT, f"{what}: the buffer holding the value has been released") from None
        if len(data) < size:
            raise KvmError(EFAULT, f"{what}: value is {len(data)} bytes, a u{8 * size} needs {size}")
        return int.from_bytes(data[:size], "little")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << (8 * size):
        return value
    raise KvmError(EFAULT, f"{what}: value {value!r} is not a readable u{8 * size}")
