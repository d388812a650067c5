"""The migration stream over a socket: every refusal is a verdict, both sides time out, a reset
is a clear error (pvtime.vmm.migration_net)."""

import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import MigrationError, Receiver, Sender, save
from pvtime.vmm.migration_net import receive, send_parts
from pvtime.vmm.migration_stream import decode, encode

from tests.vmm.helpers import open_vms


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


def _listen(*args):
    listener = subprocess.Popen([sys.executable, "-m", "pvtime.cli", "migrate", "listen", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(listener.stderr.readline().rsplit(":", 1)[1])
    return listener, port


def _one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    return lines[0]


def test_listen_gives_up_when_no_sender_connects():
    listener, _ = _listen("--accept-timeout", "0.3")
    try:
        _, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode != 0
    assert "no sender connected within 0.3 s: accept timed out" in _one_line_error(err)


def test_listen_refuses_a_sender_that_stalls_inside_a_part():
    listener, port = _listen("--read-timeout", "0.3")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall((100).to_bytes(8, "little") + b"partial")
            sock.settimeout(30)
            verdict = sock.recv(4096)
        _, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert verdict[0] == 0 and b"timed out" in verdict
    assert listener.returncode != 0
    assert "before the final part: nothing from the other side for 0.3 s: timed out" in _one_line_error(err)


def test_listen_on_a_port_in_use_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "pvtime.cli", "migrate", "listen", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in _one_line_error(done.stderr)


def test_listen_time_out_defaults_are_the_network_paths():
    from click.testing import CliRunner

    from pvtime.cli import main
    from pvtime.vmm.migration_net import ACCEPT_TIMEOUT_S, TIMEOUT_S
    text = CliRunner().invoke(main, ["migrate", "listen", "--help"]).output
    assert f"[default: {ACCEPT_TIMEOUT_S}; x>0]" in text and f"[default: {TIMEOUT_S}; x>0]" in text


def _two_part_stream():
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1))
    sender = Sender(m, "s-1")
    first = sender.precopy()
    m.pause()
    return first, sender.final(0)


def test_a_sender_that_stops_before_the_final_part_is_refused_and_nothing_is_built():
    first, _ = _two_part_stream()
    kvm = Kvm(Host(10**9))
    receiver = Receiver(kvm)
    a, b = socket.socketpair()
    with b:
        with a:
            a.sendall(len(first).to_bytes(8, "little") + first)
        with pytest.raises(MigrationError, match="closed the connection before the final part"):
            receive(b, lambda data: receiver.feed(data, now_ns=0), timeout=5)
    assert open_vms(kvm) == 0


def test_an_early_refusal_stops_the_sender_and_its_verdict_arrives():
    """Over TCP, with a receiver that keeps the connection open after refusing part 0: the sender
    sees the verdict and stops making parts (it used to push on until its time-out)."""
    first, final = _two_part_stream()
    other, _ = _two_part_stream()  # another stream's part 0 ...
    made = []

    def parts():
        yield other
        for i in range(200):  # ... then a sender that would go on for 800 MiB
            made.append(i)
            yield bytes(4 << 20)

    kvm = Kvm(Host(10**9))
    receiver = Receiver(kvm)
    part = decode(other)
    part.meta["config"]["vcpus"] = 0  # refused at part 0 with a field named
    crafted = encode(part)

    def gen():
        yield crafted
        yield from parts()

    def feed(data):
        return receiver.feed(data, now_ns=0)

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client:
            thread, out = _receive_in_thread(conn, feed, timeout=10)
            started = time.monotonic()
            ok, message = send_parts(client, gen(), timeout=60)
            took = time.monotonic() - started
            thread.join(30)
            conn.close()
    assert not ok and "part 0, META section, field config.vcpus" in message
    assert isinstance(out["error"], MigrationError) and len(made) < 200
    assert took < 20, f"the sender went on for {took:.1f} s after the verdict"
    assert open_vms(kvm) == 0
