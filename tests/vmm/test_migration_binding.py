"""A migration stream is bound to one migration (pvtime.vmm.migration_stream's BIND section): a
random nonce per stream, each part's index and the previous part's checksum, the final part
sealing the count; the receiver refuses anything else, and the nonce never reaches results."""

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import pytest

from pvtime.guest.clockwatch import ClockWatch, WatchLog
from pvtime.host import EventLoop, Host, Scheduler
from pvtime.kvm import Kvm
from pvtime.report import write_results
from pvtime.sim import scenario
from pvtime.sim.runner import run
from pvtime.vmm import Machine, MachineConfig, build_machine, start_vcpu_threads
from pvtime.vmm.migration import LiveMigration, MigrationError, Receiver, Sender, restore_parts
from pvtime.vmm.migration_stream import (
    CHAIN_START, FRAMING_BYTES, MAGIC, NONCE_SIZE, STREAM_VERSION, Binding, charged_bytes, decode, digest,
    encode,
)

from tests.vmm.helpers import open_vms

MS = 1_000_000


def vm(fill: bytes = b"a", name: str = "v") -> Machine:
    """A 1 MiB VM (never run) with a page of `fill` in RAM."""
    m = Machine(Kvm(Host(25_000_000)), MachineConfig(name, memory_mib=1, lpt_pv_hz=10**9))
    m.ram[4096:8192] = fill * 4096
    return m


def stream(m: Machine, label: str = "same", rounds: int = 2) -> list[bytes]:
    """`rounds` pre-copy parts, a page changed between them, then the final part."""
    sender = Sender(m, label)
    parts = []
    for i in range(rounds):
        parts.append(sender.precopy())
        m.ram[8192 + i * 4096:8192 + i * 4096 + 4] = b"next"
    m.pause()
    parts.append(sender.final(0))
    return parts


def test_each_stream_gets_its_own_nonce_and_its_parts_are_indexed_chained_and_sealed():
    a, b = stream(vm()), stream(vm())
    bindings = [decode(p).binding for p in a]
    assert [x.index for x in bindings] == [0, 1, 2]
    assert [x.count for x in bindings] == [0, 0, 3]  # the final part seals the count
    assert {x.nonce for x in bindings} == {bindings[0].nonce} and len(bindings[0].nonce) == NONCE_SIZE
    assert decode(b[0]).binding.nonce != bindings[0].nonce
    assert bindings[0].previous == CHAIN_START
    for before, part in zip(a, bindings[1:]):  # the sha256 of the whole previous part
        assert part.previous == digest(before) == hashlib.sha256(before[:-32]).digest()


def test_parts_of_two_vms_with_the_same_migration_label_are_not_one_stream():
    """Issue 10, finding 9: this splice was accepted (memory of one VM, vCPUs of the other)."""
    a, b = stream(vm(b"a")), stream(vm(b"b"))
    kvm = Kvm(Host(10**9))
    assert decode(a[0]).meta["migration"] == decode(b[1]).meta["migration"]
    with pytest.raises(MigrationError, match="^part 1, BIND section, field nonce: not this stream's nonce"):
        restore_parts(kvm, [a[0], b[1], b[2]], now_ns=0)
    assert open_vms(kvm) == 0
    assert restore_parts(kvm, a, now_ns=0).ram[4096:4100] == b"aaaa"  # each stream alone restores


@pytest.mark.parametrize("order,where", [
    ([0, 0, 1, 2], "part 1, BIND section, field index: 0, expected 1: parts out of order, repeated"),
    ([0, 2, 1], "part 1, BIND section, field index: 2, expected 1"),
    ([0, 2], "part 1, BIND section, field index: 2, expected 1"),
    ([1, 2], "part 0, BIND section, field index: 1, expected 0: the stream starts at part 1"),
    ([0, 1], "the stream ended before its final part"),
    ([0, 1, 2, 2], "part 3: the final part .* sealed the stream"),
])
def test_repeated_reordered_dropped_or_extra_parts_are_refused_and_leave_no_vm(order, where):
    parts = stream(vm())
    kvm = Kvm(Host(10**9))
    with pytest.raises(MigrationError, match=where):
        restore_parts(kvm, [parts[i] for i in order], now_ns=0)
    assert open_vms(kvm) == 0  # [0, 1, 2, 2]: the VM restored by part 2 is closed again


def _forge(data: bytes, **fields) -> bytes:
    """The part with binding fields changed and a valid checksum (what a crafted stream can do)."""
    part = decode(data)
    part.binding = dataclasses.replace(part.binding, **fields)
    return encode(part)


@pytest.mark.parametrize("at,fields,where", [
    (0, {"nonce": bytes(NONCE_SIZE)}, "part 0, BIND section, field nonce: all zero"),
    (1, {"nonce": b"x" * NONCE_SIZE}, "part 1, BIND section, field nonce"),
    (0, {"previous": b"\x01" * 32}, "part 0, BIND section, field previous: not the chain's start"),
    (1, {"previous": CHAIN_START}, "part 1, BIND section, field previous: not the checksum of part 0"),
    (2, {"count": 2}, "part 2, BIND section, field count: the final part seals 2 parts, 3 were received"),
    (2, {"count": 0}, "part 2, BIND section, field count: the final part seals 0 parts"),
    (1, {"count": 2}, "part 1, BIND section, field count: 2 in a part that is not final"),
    (1, {"index": 7}, "part 1, BIND section, field index: 7, expected 1"),
])
def test_a_forged_binding_is_refused_naming_part_section_and_field(at, fields, where):
    parts = stream(vm())
    parts[at] = _forge(parts[at], **fields)
    kvm = Kvm(Host(10**9))
    with pytest.raises(MigrationError, match=f"^{where}"):
        restore_parts(kvm, parts, now_ns=0)
    assert open_vms(kvm) == 0


def test_a_part_altered_and_rechecksummed_breaks_the_chain():
    parts = stream(vm())
    part = decode(parts[1])
    part.pages[(Machine.RAM_SLOT, 2)] = b"evil" + bytes(4092)
    parts[1] = encode(part)  # its own checksum is valid again, the next part's `previous` is not
    with pytest.raises(MigrationError, match="^part 2, BIND section, field previous: not the checksum of part 1"):
        restore_parts(Kvm(Host(10**9)), parts, now_ns=0)


def _raw_part(sections: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack("<4sQ", tag, len(payload)) + payload for tag, payload in sections)
    head = struct.pack("<8sIQ", MAGIC, STREAM_VERSION, len(body)) + body
    return head + hashlib.sha256(head).digest()


@pytest.mark.parametrize("sections,message", [
    ([(b"META", b"{}")], "section b'META' where the BIND section must come first: unbound part"),
    ([], "part without a BIND section"),
    ([(b"BIND", bytes(63))], "BIND section of 63 bytes, expected 64"),
    ([(b"BIND", bytes(64)), (b"BIND", bytes(64))], "two BIND sections"),
])
def test_a_part_without_a_proper_bind_section_is_refused(sections, message):
    with pytest.raises(MigrationError, match=message):
        Receiver(Kvm(Host(10**9))).feed(_raw_part(sections))


def test_a_refused_stream_stays_refused():
    a, b = stream(vm()), stream(vm())
    receiver = Receiver(Kvm(Host(10**9)))
    receiver.feed(a[0])
    with pytest.raises(MigrationError, match="field nonce"):
        receiver.feed(b[1])
    with pytest.raises(MigrationError, match="^part 1: the stream was already refused"):
        receiver.feed(a[1])  # the right part, too late: a refused stream is not resumed


def test_a_sealed_stream_takes_no_more_parts_from_its_sender():
    m = vm()
    sender = Sender(m, "x")
    m.pause()
    sender.final(0)
    with pytest.raises(MigrationError, match="sealed by its final part"):
        sender.final(0)


def test_the_link_charges_every_byte_but_the_bind_framing():
    """The bytes a simulation turns into transfer time do not depend on the nonce: the BIND
    section (76 bytes) is framing, uncharged, and the rest of a part is the same for any nonce."""
    parts_a, parts_b = stream(vm()), stream(vm())
    assert FRAMING_BYTES == 76
    assert [len(p) - charged_bytes(p) for p in parts_a] == [76, 76, 76]
    assert [charged_bytes(p) for p in parts_a] == [charged_bytes(p) for p in parts_b]
    assert parts_a != parts_b  # the nonce (and so the chain) differs
    m = vm()
    sender = Sender(m, "x")
    data = sender.precopy()
    assert sender.stats.bytes == charged_bytes(data)
    seen: list[bytes] = []
    live = LiveMigration(vm(), Kvm(Host(10**9)), link=lambda part: seen.append(part) or [part])
    sent = live.precopy()
    assert sent == live.stats.bytes == len(seen[0]) - FRAMING_BYTES


MIGRATING = """
name = "m"
duration_ms = 60
[[host]]
name = "a"
cpus = 1
counter_hz = 24_000_000
[[host]]
name = "b"
cpus = 1
counter_hz = 100_000_000
[[vm]]
name = "v"
host = "a"
lpt_pv_hz = 1_000_000_000
guest = { kind = "model" }
[[migration]]
vm = "v"
to = "b"
at_ms = 20
"""


def test_the_nonce_never_reaches_results(tmp_path: Path, monkeypatch):
    """Two runs with different nonces give byte-identical results folders, and neither nonce is
    in any file (raw or hex)."""
    nonces = [b"\xa5" * NONCE_SIZE, b"\x5a" * NONCE_SIZE]
    folders = []
    for nonce in nonces:
        monkeypatch.setattr(Binding, "new_nonce", staticmethod(lambda nonce=nonce: nonce))
        out = tmp_path / nonce.hex()[:2]
        result = run(scenario.parse(MIGRATING, "m.toml"))
        assert [m.status.value for m in result.migrations] == ["done"]
        write_results(result, out)
        folders.append(out)
    names = sorted(p.name for p in folders[0].iterdir())
    assert names == sorted(p.name for p in folders[1].iterdir())
    for name in names:
        data = (folders[0] / name).read_bytes()
        assert data == (folders[1] / name).read_bytes(), name
        for nonce in nonces:
            assert nonce not in data and nonce.hex().encode() not in data, name
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["migrations"][0]["bytes"] > 0


def test_a_link_that_swaps_in_another_vms_part_fails_the_migration_and_the_source_runs_on():
    host = Host(25_000_000, name="src")
    core = EventLoop()
    sched = Scheduler(host, core)
    config = MachineConfig("w", memory_mib=1, lpt_pv_hz=10**9)
    log = config.layout.ram_base + 0x1000
    source = build_machine(Kvm(host), config, program=ClockWatch(log))
    threads = start_vcpu_threads(source, host, sched)
    other = stream(vm(b"o", name="w"), label="w:src->dst")
    sent = []

    def link(data: bytes) -> list[bytes]:
        sent.append(data)
        return [other[1]] if len(sent) == 2 else [data]  # round 2 delivers the other VM's part

    dest = Kvm(Host(10**9, name="dst"))
    live = LiveMigration(source, dest, link=link)
    core.run(1 * MS)
    live.precopy()
    core.run(2 * MS)
    with pytest.raises(MigrationError, match="^part 1, BIND section, field nonce"):
        live.precopy()
    assert open_vms(dest) == 0 and source.stopped is None and not source.paused
    reads = WatchLog.unpack(source.read_guest(log, WatchLog.SIZE)).reads
    core.run(8 * MS)  # past the 4 ms tick: a segment runs ahead of the loop up to it
    after = WatchLog.unpack(source.read_guest(log, WatchLog.SIZE))
    assert after.reads > reads and after.backsteps == 0  # it kept running
    assert all(t.task is not None for t in threads)
