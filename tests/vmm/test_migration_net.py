"""The migration stream over a socket: every refusal is a verdict, both sides time out, a reset
is a clear error (pvtime.vmm.migration_net)."""

import socket
import struct
import subprocess
import sys
import threading

import pytest

from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import MigrationError, Receiver, save
from pvtime.vmm.migration_net import receive, send_parts
from pvtime.vmm.migration_stream import decode, encode


def crafted():
    """A stream with a valid checksum and a META config of null."""
    part = decode(save(Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1)), now_ns=0))
    part.meta["config"] = None
    return encode(part)


def _receive_in_thread(sock, feed, **kw):
    out = {}

    def run():
        try:
            out["machine"] = receive(sock, feed, **kw)
        except Exception as err:  # noqa: BLE001 -- the test inspects it
            out["error"] = err
    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_crafted_stream_is_answered_with_a_verdict_naming_the_field():
    a, b = socket.socketpair()
    with a, b:
        receiver = Receiver(Kvm(Host(10**9)))
        thread, out = _receive_in_thread(b, lambda data: receiver.feed(data, now_ns=0))
        ok, message = send_parts(a, [crafted()], timeout=10)
        thread.join(10)
    assert not ok and "part 0, META section, field config" in message
    assert isinstance(out["error"], MigrationError)


def test_any_receiver_failure_is_answered_with_a_verdict():
    def feed(data):
        raise RuntimeError("boom")
    a, b = socket.socketpair()
    with a, b:
        thread, out = _receive_in_thread(b, feed)
        ok, message = send_parts(a, [b"x"], timeout=10)
        thread.join(10)
    assert not ok and "RuntimeError: boom" in message and isinstance(out["error"], RuntimeError)


def test_listen_prints_a_refusal_without_a_traceback():
    listener = subprocess.Popen([sys.executable, "-m", "pvtime.cli", "migrate", "listen"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(listener.stderr.readline().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            ok, message = send_parts(sock, [crafted()], timeout=30)
        _, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert not ok and "field config" in message
    assert listener.returncode != 0 and "migration refused: part 0, META section, field config" in err
    assert "Traceback" not in err


def test_a_sender_that_stalls_before_the_final_part_times_out_the_receiver():
    a, b = socket.socketpair()
    with a, b:
        a.sendall((100).to_bytes(8, "little") + b"partial")
        with pytest.raises(MigrationError, match="timed out"):
            receive(b, lambda data: None, timeout=0.2)
        a.settimeout(5)
        assert a.recv(1) == b"\x00"  # the sender is told


def test_a_receiver_that_never_answers_times_out_the_sender():
    a, b = socket.socketpair()
    with a, b:
        ok, message = send_parts(a, [b"part"], timeout=0.2)
    assert not ok and "timed out" in message


def test_a_connection_reset_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with conn:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sendall((100).to_bytes(8, "little"))
            client.close()  # with SO_LINGER 0: an RST
            with pytest.raises(MigrationError, match="reset"):
                receive(conn, lambda data: None, timeout=5)
