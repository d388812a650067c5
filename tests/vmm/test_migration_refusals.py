"""Crafted migration streams (valid checksum, bad content): a MigrationError naming part, section
and field, and nothing left behind at the destination -- as a VMM must treat an untrusted stream."""

import pytest

from pvtime.abi.uapi import KVM_REG_ARM_TIMER_CNT
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import MigrationError, Receiver, Sender, restore, save
from pvtime.vmm.migration_stream import decode, encode
from tests.vmm.helpers import open_vms, snapshot




def _set(path, value):
    def craft(part):
        *parents, last = path
        obj = part.meta if parents[0] == "meta" else part.state
        for key in parents[1:]:
            obj = obj[key]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return craft


@pytest.mark.parametrize("craft,where", [
    (_set(("meta", "config"), None), "META section, field config:"),
    (_set(("meta", "migration"), KeyError), "META section, field migration: missing"),
    (_set(("meta", "regions", 0, 2), -1), r"META section, field regions\[0\].size"),
    (_set(("meta", "regions", 0, 2), 1 << 64), r"META section, field regions\[0\].size"),
    (_set(("meta", "regions", 0, 2), 2 << 20), r"META section, field regions\[0\]:"),
    (_set(("meta", "regions", 1, 0), 7), r"META section, field regions\[1\].slot"),
    (_set(("meta", "config", "memory_mib"), 1 << 60), "META section, field config.memory_mib"),
    (_set(("meta", "config", "layout", "ram_base"), 1 << 70), "META section, field config.layout.ram_base"),
    (_set(("meta", "config", "vcpus"), 600), "META section, field config.vcpus"),
    (_set(("meta", "config", "quirks"), "x"), "META section, field config.quirks"),
    (_set(("meta", "config", "layout", "bogus"), 1), "META section, field config.layout"),
    (_set(("state", "native_hz"), None), "STAT section, field native_hz"),
    (_set(("state", "vcpus"), [{}, {}]), "STAT section, field vcpus"),
    (_set(("state", "vcpus", 0, "regs", "zz"), 1), r"STAT section, field vcpus\[0\].regs"),
    (_set(("state", "vcpus", 0, "regs", f"{KVM_REG_ARM_TIMER_CNT:#x}"), KeyError),
     r"STAT section, field vcpus\[0\].regs: register .* missing"),
    (_set(("state", "lpt"), {"ipa": -1, "pv_hz": 1}), "STAT section, field lpt.ipa"),
    (_set(("state", "guest"), {"kind": "resident", "program": "clockwatch"}), "STAT section, field guest.options"),
])
def test_crafted_fields_are_refused_naming_part_section_and_field(craft, where):
    part = decode(snapshot()[1])
    craft(part)
    kvm = Kvm(Host(10**9))
    with pytest.raises(MigrationError, match=f"^part 0, {where}"):
        restore(kvm, encode(part), now_ns=0)
    assert open_vms(kvm) == 0


def test_a_final_part_refused_after_the_vm_was_built_closes_it():
    """A refusal that comes only once the destination VM exists (here: the resident program's
    options) must close that VM, like kvm_destroy_vm on the VMM's close() of the VM fd."""
    part = decode(snapshot()[1])
    part.state["guest"] = {"kind": "resident", "program": "clockwatch", "options": {"log_addr": 3}}
    kvm = Kvm(Host(10**9))
    with pytest.raises(MigrationError, match="^part 0, STAT section"):
        restore(kvm, encode(part), now_ns=0)
    assert open_vms(kvm) == 0


def test_a_refused_final_part_after_precopy_leaves_no_vm():
    source = Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1))
    sender = Sender(source, "s-1")
    kvm = Kvm(Host(10**9))
    receiver = Receiver(kvm)
    assert receiver.feed(sender.precopy(), now_ns=0) is None
    source.pause()
    final = decode(sender.final(0))
    final.state["guest"] = {"kind": "resident", "program": "clockwatch", "options": {"log_addr": 3}}
    with pytest.raises(MigrationError, match="^part 1, STAT section"):
        receiver.feed(encode(final), now_ns=0)
    assert open_vms(kvm) == 0


# --- a stopped VM is refused (the migration module's docstring says why) -----------------------

def _stopped_vm():
    from pvtime.vmm import StopReason
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("done", memory_mib=1))
    m.exit_status = 3
    m.stop(StopReason.guest_exit(3))
    return m


def test_a_vm_whose_guest_exited_is_not_migrated():
    m = _stopped_vm()
    with pytest.raises(MigrationError, match="done has stopped .*not migrated"):
        save(m, now_ns=0)
    with pytest.raises(MigrationError, match="has stopped"):
        Sender(m, "done-1").precopy()
    assert m.exit_status == 3 and m.stopped is not None  # it keeps its stopped state and status


def test_a_vm_that_stops_during_precopy_is_refused_and_left_as_it_was():
    from pvtime.kvm import KvmError
    from pvtime.vmm import StopReason
    from pvtime.vmm.migration import LiveMigration
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1))
    dest = Kvm(Host(10**9))
    live = LiveMigration(m, dest)
    live.precopy()
    m.stop(StopReason.guest_exit(0))
    with pytest.raises(MigrationError, match="has stopped"):
        live.stop_and_copy(0)
    assert not m.paused and open_vms(dest) == 0
    with pytest.raises(KvmError):  # dirty logging is off again
        m.vm.get_dirty_log(Machine.RAM_SLOT)


def _listen_and_send(*, pv_hz, dest_hz, allow):
    """`listen_vm` (in a thread, as `pvtime migrate listen`) receiving `send_vm`'s clock-watch VM
    from a 25 MHz host: (the sender's result, the listener's result or its MigrationError)."""
    import threading

    from pvtime.sim.migration import listen_vm, send_vm

    port: list[int] = []
    ready = threading.Event()
    got: list[object] = []

    def listen() -> None:
        try:
            got.append(listen_vm(0, native_hz=dest_hz, run_ms=1, allow_frequency_change=allow,
                                 announce=lambda p: (port.append(p), ready.set())))
        except MigrationError as err:
            got.append(err)

    t = threading.Thread(target=listen)
    t.start()
    assert ready.wait(30)
    sent = send_vm(("127.0.0.1", port[0]), native_hz=25_000_000, pv_hz=pv_hz, run_ms=2)
    t.join(30)
    return sent, got[0]


def test_listener_refuses_a_vm_without_lpt_from_another_frequency_unless_allowed():
    """As a scenario's [[migration]] is refused without allow_frequency_change: nothing would
    rescale the guest's counter, so its clock would run 40x fast on a 1 GHz host."""
    sent, got = _listen_and_send(pv_hz=None, dest_hz=10**9, allow=False)
    assert not sent["accepted"] and "no LPT" in str(sent["message"])
    assert isinstance(got, MigrationError)
    assert "field native_hz" in str(got) and "25000000 Hz" in str(got) and "1000000000 Hz" in str(got)
    sent, got = _listen_and_send(pv_hz=None, dest_hz=10**9, allow=True)
    assert sent["accepted"] and isinstance(got, dict)
    sent, got = _listen_and_send(pv_hz=None, dest_hz=25_000_000, allow=False)  # same frequency
    assert sent["accepted"] and isinstance(got, dict)
    sent, got = _listen_and_send(pv_hz=10**9, dest_hz=10**9, allow=False)  # LPT rescales
    assert sent["accepted"] and isinstance(got, dict)
