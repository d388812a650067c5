"""The migration stream over a socket: framed parts one way, one verdict the other way.

Sender -> receiver: each part as ``u64 length | part bytes`` (the part carries its own version
and checksum, pvtime.vmm.migration_stream); a length of 0 ends the stream early (abort).
Receiver -> sender, after the final part or the first refused one: ``u8 ok | u32 length |
UTF-8 message``. The sender stops its VM only on ``ok``; otherwise it resumes it.

Every refusal is answered as a verdict, whatever refused the stream. Both sides wait at most
`timeout` seconds (wall clock, on this network path only) for the other: a receiver whose sender
stops before the final part, or a sender whose receiver never answers, gets a MigrationError
(receiver) or a refusal (sender) that says so; so does a connection reset.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable

from pvtime.vmm.machine import Machine
from pvtime.vmm.migration_stream import MigrationError

_LEN = struct.Struct("<Q")
_VERDICT = struct.Struct("<BI")
MAX_PART_BYTES = 1 << 34  # refuse absurd lengths before allocating
TIMEOUT_S = 30.0


def send_parts(sock: socket.socket, parts: Iterable[bytes], *, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """Send `parts` then wait for the verdict: (accepted, message). No verdict is a refusal."""
    sock.settimeout(timeout)
    try:
        for part in parts:
            sock.sendall(_LEN.pack(len(part)) + part)
    except OSError:
        pass  # the receiver may have refused a part and closed: its verdict says why
    try:
        head = _recv_exact(sock, _VERDICT.size)
        if head is None:
            return False, "the receiver closed the connection without a verdict"
        ok, size = _VERDICT.unpack(head)
        message = _recv_exact(sock, size) or b""
    except OSError as err:
        return False, f"no verdict from the receiver: {_why(err, timeout)}"
    return bool(ok), message.decode("utf-8", "replace")


def receive(sock: socket.socket, feed: Callable[[bytes], Machine | None], *,
            timeout: float = TIMEOUT_S) -> Machine:
    """Read parts into `feed` until it returns the restored machine; answer the verdict.

    Raises MigrationError (after telling the sender) on a refused, truncated, aborted, stalled
    or reset stream. Any other exception from `feed` is answered as a refusal too, then raised.
    """
    sock.settimeout(timeout)
    try:
        while True:
            head = _recv_exact(sock, _LEN.size)
            if head is None:
                raise MigrationError("the sender closed the connection before the final part: truncated stream")
            (size,) = _LEN.unpack(head)
            if size == 0:
                raise MigrationError("the sender aborted the migration")
            if size > MAX_PART_BYTES:
                raise MigrationError(f"part of {size} bytes announced: not a pvtime migration stream")
            data = _recv_exact(sock, size)
            if data is None:
                raise MigrationError(f"connection closed inside a part of {size} bytes: truncated stream")
            machine = feed(data)
            if machine is not None:
                _verdict(sock, True, f"restored {machine.config.name}")
                return machine
    except OSError as err:
        refusal = MigrationError(f"the stream stopped before the final part: {_why(err, timeout)}")
        _verdict(sock, False, str(refusal))
        raise refusal from None
    except Exception as err:
        _verdict(sock, False, str(err) if isinstance(err, MigrationError) else
                 f"the receiver failed: {type(err).__name__}: {err}")
        raise


def _why(err: OSError, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"nothing from the other side for {timeout:g} s: timed out"
    if isinstance(err, ConnectionResetError):
        return "the connection was reset by the other side"
    return f"{type(err).__name__}: {err}"


def _verdict(sock: socket.socket, ok: bool, message: str) -> None:
    data = message.encode()
    try:
        sock.sendall(_VERDICT.pack(int(ok), len(data)) + data)
    except OSError:
        pass


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
