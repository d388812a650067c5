"""The migration stream over a socket: framed parts one way, one verdict the other way.

Sender -> receiver: each part as ``u64 length | part bytes`` (the part carries its own version,
checksum and binding, pvtime.vmm.migration_stream); a length of 0 ends the stream early (abort).
Receiver -> sender, after the final part or the first refused one: ``u8 ok | u32 length |
UTF-8 message``. The sender stops its VM only on ``ok``; otherwise it resumes it.

Every refusal is answered as a verdict, whatever refused the stream, and a sender stops sending
(and making parts) as soon as a verdict has arrived. Nothing waits forever, and every wait is wall
clock on this network path only (scenario migrations never come here): a listener waits
`accept_timeout` seconds for a sender (:func:`accept`); each read or write waits at most
`timeout` seconds for the other side. A receiver whose sender stalls or stops before the final
part, or a sender whose receiver never answers, gets a MigrationError (receiver) or a refusal
(sender) that says so; so does a connection reset.
"""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Callable, Iterable

from pvtime.vmm.machine import Machine
from pvtime.vmm.migration_stream import MigrationError

_LEN = struct.Struct("<Q")
_VERDICT = struct.Struct("<BI")
MAX_PART_BYTES = 1 << 34  # refuse absurd lengths before allocating
TIMEOUT_S = 30.0  # each read or write
ACCEPT_TIMEOUT_S = 120.0  # a listener waiting for its sender


def accept(server: socket.socket, *, timeout: float = ACCEPT_TIMEOUT_S) -> socket.socket:
    """The first connection to `server`; MigrationError if none comes within `timeout` seconds."""
    server.settimeout(timeout)
    try:
        conn, _ = server.accept()
    except TimeoutError:
        raise MigrationError(f"no sender connected within {timeout:g} s: accept timed out") from None
    return conn


def send_parts(sock: socket.socket, parts: Iterable[bytes], *, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """Send `parts` then wait for the verdict: (accepted, message). No verdict is a refusal.

    An early verdict (the receiver refused a part) stops the sending: later parts are not made."""
    sock.settimeout(timeout)
    try:
        for part in parts:
            if not _send_unless_answered(sock, _LEN.pack(len(part)) + part, timeout):
                break  # a verdict (or the end) came before the final part: no use sending more
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
    if isinstance(err, (ConnectionResetError, BrokenPipeError)):
        return "the connection was reset by the other side"
    return f"{type(err).__name__}: {err}"


def _send_unless_answered(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """Send `data`, a chunk whenever the socket takes one, unless the other side has something to
    say (a verdict, or the end): then stop and answer False. TimeoutError after `timeout` seconds
    of neither."""
    view = memoryview(data)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while view:
            ready = selector.select(timeout)
            if not ready:
                raise TimeoutError(f"the receiver took nothing for {timeout:g} s")
            if ready[0][1] & selectors.EVENT_READ:
                return False
            view = view[sock.send(view[:1 << 20]):]
    return True


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
