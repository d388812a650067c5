"""Register widths: the masks and sign conversions every layer uses on 32- and 64-bit values."""

U32 = 0xFFFF_FFFF
U64 = (1 << 64) - 1


def sext32(value: int) -> int:
    """The low 32 bits of `value` as a signed 32-bit number (TVAL, for example)."""
    value &= U32
    return value - (1 << 32) if value >> 31 else value


def s64(value: int) -> int:
    """`value` modulo 2^64 as a signed 64-bit number (an s64 in the kernel)."""
    value &= U64
    return value - (1 << 64) if value >> 63 else value
