"""Corrupted migration streams (issue 10's stream campaign): a live migration over a faulty link.

A running VM (the resident clock-watch guest, so its progress is in RAM) is migrated live in
two to four parts -- one to three pre-copy rounds while it runs, then the final part -- through a
`LiveMigration` whose link alters what the destination receives: bytes flipped, a part cut
short, parts of another VM's stream (same configuration, same migration label) spliced in,
parts reordered, repeated or dropped, a binding field forged under a valid checksum. Parts are
delivered as soon as the link has them, so a refusal can come in a pre-copy round or at the end.

Each example must end with:
- a MigrationError, never another exception and never an accepted VM;
- nothing left on the destination (no VM on its KVM: the public API's next VM is still "vm0");
- the source running and intact: it is neither stopped nor paused, its guest makes progress
  with a clock that never steps back, and a clean migration of it afterwards succeeds, with
  the guest's log as it was at the pause.

`check_stream` runs one example; a longer campaign can call it with many more.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvtime.guest.clockwatch import ClockWatch, WatchLog
from pvtime.host import EventLoop, Host, Scheduler
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig, VcpuThread, build_machine, start_vcpu_threads
from pvtime.vmm.migration import LiveMigration, MigrationError, Sender
from pvtime.vmm.migration_stream import DIGEST_SIZE, NONCE_SIZE, decode, encode

from tests.fault.tally import TALLY
from tests.vmm.helpers import open_vms

MS = 1_000_000
CONFIG = MachineConfig("w", memory_mib=1, lpt_pv_hz=10**9)
LOG = CONFIG.layout.ram_base + 0x1000  # the clock-watch guest's log


class Source:
    """The VM being migrated, running on its own host and event loop."""

    def __init__(self) -> None:
        self.host = Host(25_000_000, name="src")
        self.core = EventLoop()
        self.sched = Scheduler(self.host, self.core)
        self.machine = build_machine(Kvm(self.host), CONFIG, program=ClockWatch(LOG))
        self.threads: list[VcpuThread] = start_vcpu_threads(self.machine, self.host, self.sched)

    def run(self, ms: float) -> None:
        """Run the event loop `ms` virtual milliseconds further."""
        self.core.run(self.core.now + int(ms * MS))

    def log(self, machine: Machine | None = None) -> WatchLog:
        """The guest's log (in `machine`'s RAM, by default the source's)."""
        data = (machine or self.machine).read_guest(LOG, WatchLog.SIZE)
        assert data is not None
        return WatchLog.unpack(data)

    def wake(self) -> None:
        """After a failed final step the source is resumed: wake its threads (as the driver does)."""
        for thread in self.threads:
            assert thread.task is not None
            self.sched.wake(thread.task)

    def migrate(self, dest: Kvm, link: Callable[[bytes], list[bytes]] | None = None, parts: int = 3) -> Machine:
        """A live migration of `parts` parts to `dest` through `link`; the source is woken again
        if it fails once paused."""
        live = LiveMigration(self.machine, dest, link=link)
        for _ in range(parts - 1):
            self.run(1)
            live.precopy()
        self.run(1)
        last = max(t.last_ns for t in self.threads)
        try:
            live.stop_and_copy(self.core.now, last)
            self.run(0.5)  # the transfer
            return live.complete(self.core.now)
        except MigrationError:
            self.wake()
            raise


def twin_stream(label: str, n: int) -> list[bytes]:
    """Another VM's stream of `n` parts: the same configuration and migration label, other memory."""
    twin = Source()
    twin.machine.ram[0x8000:0x8004] = b"twin"
    sender = Sender(twin.machine, label)
    parts = []
    for _ in range(n - 1):
        twin.run(1)
        parts.append(sender.precopy())
    twin.run(1)
    twin.machine.pause()
    parts.append(sender.final(twin.core.now))
    return parts


# A delivery plan: what the destination receives, in order: (origin, part index, transform), the
# origin "src" (the migrating VM's part, once sent) or "twin" (the other VM's).
Transform = Callable[[bytes], bytes]
Item = tuple[str, int, Transform]


def _same(data: bytes) -> bytes:
    return data


@dataclass
class FaultyLink:
    """Delivers `plan` in order, each item as soon as the part it needs has been sent."""

    plan: list[Item]
    twin: list[bytes]
    sent: list[bytes] = dataclasses.field(default_factory=list)
    next: int = 0

    def __call__(self, data: bytes) -> list[bytes]:
        self.sent.append(data)
        out = []
        while self.next < len(self.plan):
            origin, index, transform = self.plan[self.next]
            if origin == "src" and index >= len(self.sent):
                break  # held back until the source sends it
            out.append(transform((self.sent if origin == "src" else self.twin)[index]))
            self.next += 1
        return out


def check_stream(n: int, plan: list[Item]) -> str:
    """Migrate a fresh VM in `n` parts through a link delivering `plan`; it must be refused
    cleanly. Returns the refusal's message."""
    TALLY["streams"] += 1
    source = Source()
    source.run(1)
    dest = Kvm(Host(10**9, name="dst"))
    link = FaultyLink(plan, twin_stream(f"{CONFIG.name}:{source.host.name}->{dest.host.name}", n))
    try:
        source.migrate(dest, link, n)
    except MigrationError as err:
        refusal = str(err)
    except Exception as err:  # noqa: BLE001 -- the point: anything else is a finding
        pytest.fail(f"a corrupted stream raised {type(err).__name__}: {err}")
    else:
        pytest.fail(f"a corrupted stream was accepted: {plan}")
    assert open_vms(dest) == 0, refusal  # nothing left behind
    m = source.machine
    assert m.stopped is None and not m.paused, refusal
    before = source.log()
    source.run(10)  # past the next tick: a segment may already have run ahead of a shorter step
    after = source.log()
    assert after.reads > before.reads and after.backsteps == 0, refusal  # it runs on
    restored = source.migrate(dest)  # and a clean migration of it still works
    assert m.stopped is not None and source.log(restored) == source.log()
    return refusal


def clean(n: int) -> list[Item]:
    """The plan of a faithful link for `n` parts."""
    return [("src", i, _same) for i in range(n)]


Plan = tuple[int, list[Item]]  # parts sent, what is delivered
counts = st.integers(2, 4)


@st.composite
def flipped(draw: st.DrawFn) -> Plan:
    """One byte of one part xor-ed with a non-zero value (anywhere: header, BIND, pages, digest)."""
    n = draw(counts)
    index, where, xor = draw(st.integers(0, n - 1)), draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(1, 255))

    def flip(data: bytes) -> bytes:
        at = int(where * len(data))
        return data[:at] + bytes([data[at] ^ xor]) + data[at + 1:]
    plan = clean(n)
    plan[index] = ("src", index, flip)
    return n, plan


@st.composite
def truncated(draw: st.DrawFn) -> Plan:
    """One part cut short (possibly to nothing)."""
    n = draw(counts)
    index, keep = draw(st.integers(0, n - 1)), draw(st.floats(0, 1, exclude_max=True))
    plan = clean(n)
    plan[index] = ("src", index, lambda data: data[:int(keep * len(data))])
    return n, plan


@st.composite
def spliced(draw: st.DrawFn) -> Plan:
    """Some parts, not all, from the other VM's stream (same label), in their places."""
    n = draw(counts)
    mask = draw(st.sampled_from([m for m in itertools.product((False, True), repeat=n) if any(m) and not all(m)]))
    return n, [("twin" if other else "src", i, _same) for i, other in enumerate(mask)]


@st.composite
def reordered(draw: st.DrawFn) -> Plan:
    """The parts in another order."""
    n = draw(counts)
    order = draw(st.sampled_from(list(itertools.permutations(range(n)))[1:]))  # all but the identity
    return n, [("src", i, _same) for i in order]


@st.composite
def repeated(draw: st.DrawFn) -> Plan:
    """One part delivered twice: again at any later place, the end included."""
    n = draw(counts)
    index = draw(st.integers(0, n - 1))
    plan = clean(n)
    plan.insert(draw(st.integers(index + 1, n)), ("src", index, _same))
    return n, plan


@st.composite
def dropped(draw: st.DrawFn) -> Plan:
    """One part lost."""
    n = draw(counts)
    index = draw(st.integers(0, n - 1))
    return n, [item for item in clean(n) if item[1] != index]


@st.composite
def forged(draw: st.DrawFn) -> Plan:
    """One BIND field of one part changed, the part's checksum made valid again."""
    n = draw(counts)
    index = draw(st.integers(0, n - 1))
    name, value = draw(st.one_of(
        st.tuples(st.just("nonce"), st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)),
        st.tuples(st.just("index"), st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("count"), st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("previous"), st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)),
    ))

    def forge(data: bytes) -> bytes:
        part = decode(data)
        assert part.binding is not None
        new = value
        if getattr(part.binding, name) == new:  # not a change: make it one
            new = new ^ 1 if isinstance(new, int) else bytes([new[0] ^ 1]) + new[1:]
        part.binding = dataclasses.replace(part.binding, **{name: new})
        return encode(part)
    plan = clean(n)
    plan[index] = ("src", index, forge)
    return n, plan


def test_a_clean_stream_through_the_same_link_is_accepted():
    """The harness itself: the link delivering the plain plan migrates the VM."""
    source = Source()
    source.run(1)
    dest = Kvm(Host(10**9, name="dst"))
    restored = source.migrate(dest, FaultyLink(clean(3), []))
    assert open_vms(dest) == 1 and source.machine.stopped is not None
    assert source.log(restored) == source.log() and source.log().reads > 0


@settings(max_examples=40)
@given(flipped())
def test_a_flipped_byte_is_refused(plan):
    check_stream(*plan)


@settings(max_examples=25)
@given(truncated())
def test_a_truncated_part_is_refused(plan):
    assert "truncated" in check_stream(*plan)


@settings(max_examples=20)
@given(spliced())
def test_parts_of_another_vms_stream_are_refused(plan):
    assert "BIND section, field nonce" in check_stream(*plan)


@settings(max_examples=20)
@given(reordered())
def test_reordered_parts_are_refused(plan):
    assert "BIND section, field index" in check_stream(*plan)


@settings(max_examples=20)
@given(repeated())
def test_a_repeated_part_is_refused(plan):
    check_stream(*plan)


@settings(max_examples=10)
@given(dropped())
def test_a_dropped_part_is_refused(plan):
    check_stream(*plan)


@settings(max_examples=40)
@given(forged())
def test_a_forged_binding_is_refused(plan):
    assert "BIND section, field" in check_stream(*plan)
