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
