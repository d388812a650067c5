"""KVM_SET_USER_MEMORY_REGION checks and host-side guest memory access."""

import pytest

from pvtime.abi.errno import EEXIST, EINVAL
from pvtime.abi.uapi import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, PAGE_SIZE
from pvtime.host import Host
from pvtime.kvm import Kvm, KvmError
from tests.conftest import ScriptCpu, run_guest_code


@pytest.fixture
def vm():
    return Kvm(Host()).create_vm()


class Guest:
    """A VM with one vCPU, whose guest memory accesses go through KVM's memslots as a CPU
    backend makes them (kvm_read_guest / kvm_write_guest), inside KVM_RUN."""

    def __init__(self) -> None:
        self.host = Host()
        self.cpu = ScriptCpu(0)
        self.vm = Kvm(self.host).create_vm(cpu=lambda i: self.cpu)
        self.vcpu = self.vm.create_vcpu(0)
        self.task = self.host.spawn("vcpu0")

    def _run(self, code):
        return run_guest_code(self.host, self.task, self.vcpu, self.cpu, code)[1]

    def read(self, gpa, size):
        return self._run(lambda: self.cpu.traps.read_memory(gpa, size))

    def write(self, gpa, data):
        return self._run(lambda: self.cpu.traps.write_memory(gpa, data))

    def memslots(self):
        return self._run(lambda: self.cpu.traps.memslots())


def errno_of(fn, *args, **kw):
    with pytest.raises(KvmError) as err:
        fn(*args, **kw)
    return err.value.errno


def test_the_vmm_buffer_is_the_guest_memory():
    g = Guest()
    buf = bytearray(0x2000)
    g.vm.set_user_memory_region(0, 0x4000_0000, 0x2000, buf)
    assert g.write(0x4000_0010, b"abc")
    assert buf[0x10:0x13] == b"abc"
    buf[0x20] = 7
    assert g.read(0x4000_0020, 1) == b"\x07"


def test_unbacked_reads_and_writes_fail():
    g = Guest()
    g.vm.set_user_memory_region(0, 0x4000_0000, 0x1000, bytearray(0x1000))
    assert g.read(0x3FFF_FFF8, 8) is None
    assert g.read(0x4000_0FFC, 8) is None  # straddles the end
    assert not g.write(0x5000_0000, b"x")


def test_read_only_slots_are_readable_but_not_writable():
    g = Guest()
    buf = bytearray(b"\x55" * 0x1000)
    g.vm.set_user_memory_region(0, 0x1000, 0x1000, buf, KVM_MEM_READONLY)
    assert g.read(0x1000, 2) == b"\x55\x55"
    assert not g.write(0x1000, b"\0")
    assert buf[0] == 0x55


@pytest.mark.parametrize("args,err", [
    ((0, 0x1001, 0x1000), EINVAL),  # unaligned address
    ((0, 0x1000, 0x800), EINVAL),  # unaligned size
    ((512, 0x1000, 0x1000), EINVAL),  # slot id out of range
    ((1, 0x0, 0x0), EINVAL),  # deleting a slot that does not exist
])
def test_bad_regions(vm, args, err):
    assert errno_of(vm.set_user_memory_region, *args, bytearray(0x1000)) == err


def test_unknown_flags_and_short_buffers_are_einval(vm):
    assert errno_of(vm.set_user_memory_region, 0, 0x1000, 0x1000, bytearray(0x1000), 0x80) == EINVAL
    assert errno_of(vm.set_user_memory_region, 0, 0x1000, 0x2000, bytearray(0x1000)) == EINVAL
    assert errno_of(vm.set_user_memory_region, 0, 0x1000, 0x1000, bytes(0x1000)) == EINVAL


def test_overlap_is_eexist_and_delete_frees_the_range(vm):
    vm.set_user_memory_region(0, 0x10000, 0x2000, bytearray(0x2000))
    assert errno_of(vm.set_user_memory_region, 1, 0x11000, 0x1000, bytearray(0x1000)) == EEXIST
    vm.set_user_memory_region(0, 0x10000, 0, None)
    vm.set_user_memory_region(1, 0x11000, 0x1000, bytearray(0x1000))


def test_read_only_cannot_be_toggled_in_place(vm):
    buf = bytearray(0x1000)
    vm.set_user_memory_region(0, 0x1000, 0x1000, buf)
    assert errno_of(vm.set_user_memory_region, 0, 0x1000, 0x1000, buf, KVM_MEM_READONLY) == EINVAL


def test_a_slot_past_the_40_bit_ipa_space_is_efault_after_the_overlap_check(vm):
    from pvtime.abi.errno import EFAULT

    # kvm_arch_prepare_memory_region: the default VM type has a 40-bit IPA space.
    assert errno_of(vm.set_user_memory_region, 0, (1 << 40) - 0x1000, 0x2000, bytearray(0x2000)) == EFAULT
    vm.set_user_memory_region(0, (1 << 40) - 0x1000, 0x1000, bytearray(0x1000))  # the last page fits
    assert errno_of(vm.set_user_memory_region, 1, (1 << 40) - 0x1000, 0x2000, bytearray(0x2000)) == EEXIST


def test_a_host_write_across_two_pages_dirties_both():
    from pvtime.kvm.memory import GuestMemory
    from pvtime.vmm.migration import dirty_pages

    mem, buf = GuestMemory(), bytearray(16 * PAGE_SIZE)
    mem.set_region(0, 0x4000_0000, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES)
    assert mem.write(0x4000_0000 + 9 * PAGE_SIZE - 2, b"abcd")  # kvm_write_guest
    assert dirty_pages(mem.get_dirty_log(0)) == [8, 9]


def test_a_backend_sees_the_same_memslots_object_until_they_change():
    """What a machine-code backend maps (slots()) stays the same object while nothing
    changed, so the backend skips looking; a new slot, a flag change, a deletion, or a dirty-log
    read (kvm_vm_ioctl_get_dirty_log write-protects the slot again) give a new one."""
    g = Guest()
    slots = g.memslots  # as a backend asks, inside KVM_RUN
    buf = bytearray(0x2000)
    g.vm.set_user_memory_region(0, 0x4000_0000, 0x2000, buf)
    first = slots()
    assert slots() is first and [s.slot for s in first] == [0]
    g.vm.set_user_memory_region(0, 0x4000_0000, 0x2000, buf)  # the same again: nothing changed
    assert slots() is first
    g.vm.set_user_memory_region(0, 0x4000_0000, 0x2000, buf, KVM_MEM_LOG_DIRTY_PAGES)
    logging = slots()
    assert logging is not first and logging[0].dirty_logging
    g.vm.get_dirty_log(0)
    assert slots() is not logging
    g.vm.set_user_memory_region(1, 0x5000_0000, 0x1000, bytearray(0x1000))
    assert [s.slot for s in slots()] == [0, 1]
    g.vm.set_user_memory_region(1, 0x5000_0000, 0, None)
    assert [s.slot for s in slots()] == [0]
