"""vCPU device attributes for PV time: Linux kvm_arm_pvtime_{set,get,has}_attr, errno for errno."""

from types import SimpleNamespace

import pytest

from pvtime.abi.errno import EEXIST, EFAULT, EINVAL, ENXIO
from pvtime.abi.uapi import (
    INVALID_GPA, KVM_ARM_VCPU_PVTIME_CTRL as CTRL, KVM_ARM_VCPU_PVTIME_IPA as IPA,
    KVM_CAP_STEAL_TIME, KVM_MEM_READONLY,
)
from pvtime.host import Host
from pvtime.kvm import Kvm, KvmError
from tests.conftest import ScriptCpu, run_guest_code

RAM = 0x4000_0000


def fresh(*, schedstats=True, protected=False, slots=((0, RAM, 0x10000, 0),)):
    """A host, its KVM, a VM with `slots`, and its vCPU 0 (on a ScriptCpu, to run it)."""
    host = Host(schedstats=schedstats)
    kvm = Kvm(host)
    cpus: dict[int, ScriptCpu] = {}
    vm = kvm.create_vm(protected=protected, cpu=lambda i: cpus.setdefault(i, ScriptCpu(i)))
    for slot, gpa, size, flags in slots:
        vm.set_user_memory_region(slot, gpa, size, bytearray(size), flags)
    vcpu = vm.create_vcpu(0)
    return SimpleNamespace(host=host, kvm=kvm, vm=vm, vcpu=vcpu, cpu=cpus[0])


def fresh_vcpu(**kw):
    f = fresh(**kw)
    return f.vm, f.vcpu


def run_once(f):
    """One KVM_RUN of vCPU 0 (its guest code does nothing): the VM has run."""
    run_guest_code(f.host, f.host.spawn("t"), f.vcpu, f.cpu, lambda: None)


def errno_of(fn, *args):
    with pytest.raises(KvmError) as err:
        fn(*args)
    return err.value.errno


def test_set_then_get_returns_the_ipa():
    _, vcpu = fresh_vcpu()
    assert vcpu.get_device_attr(CTRL, IPA) == INVALID_GPA  # all ones when unset
    vcpu.set_device_attr(CTRL, IPA, RAM + 64)
    assert vcpu.get_device_attr(CTRL, IPA) == RAM + 64


def test_value_may_be_given_as_the_u64_bytes_at_attr_addr():
    _, vcpu = fresh_vcpu()
    vcpu.set_device_attr(CTRL, IPA, (RAM + 128).to_bytes(8, "little"))
    assert vcpu.get_device_attr(CTRL, IPA) == RAM + 128


def test_unknown_group_is_enxio_for_set_get_has():
    _, vcpu = fresh_vcpu()
    for group in (3, 99):  # arm64 vCPU groups are PMU_V3 0, TIMER 1, PVTIME 2
        assert errno_of(vcpu.set_device_attr, group, IPA, RAM) == ENXIO
        assert errno_of(vcpu.get_device_attr, group, IPA) == ENXIO
        assert errno_of(vcpu.has_device_attr, group, IPA) == ENXIO


def test_unknown_attribute_is_enxio_before_the_value_is_read():
    _, vcpu = fresh_vcpu()
    assert errno_of(vcpu.set_device_attr, CTRL, 1, None) == ENXIO  # not EFAULT: ENXIO comes first
    assert errno_of(vcpu.get_device_attr, CTRL, 1) == ENXIO
    assert errno_of(vcpu.has_device_attr, CTRL, 1) == ENXIO


@pytest.mark.parametrize("kind", ["no-schedstats", "protected"])
def test_unsupported_host_or_vm_is_enxio_everywhere_and_cap_agrees(kind):
    vm, vcpu = fresh_vcpu(schedstats=kind != "no-schedstats", protected=kind == "protected")
    assert vm.check_extension(KVM_CAP_STEAL_TIME) == 0
    assert errno_of(vcpu.has_device_attr, CTRL, IPA) == ENXIO
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, RAM) == ENXIO
    assert errno_of(vcpu.get_device_attr, CTRL, IPA) == ENXIO


def test_supported_cap_and_has_agree():
    f = fresh()
    assert f.vm.check_extension(KVM_CAP_STEAL_TIME) == 1 and f.kvm.check_extension(KVM_CAP_STEAL_TIME) == 1
    assert f.vcpu.has_device_attr(CTRL, IPA) is None


@pytest.mark.parametrize("value", [None, b"\x00" * 7, -1, 2**64, "0x40000000", 1.0])
def test_unreadable_value_is_efault(value):
    _, vcpu = fresh_vcpu()
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, value) == EFAULT


def test_misaligned_ipa_is_einval():
    _, vcpu = fresh_vcpu()
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, RAM + 8) == EINVAL


def test_second_set_is_eexist_but_a_misaligned_second_set_is_einval():
    _, vcpu = fresh_vcpu()
    vcpu.set_device_attr(CTRL, IPA, RAM)
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, RAM + 64) == EEXIST
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, RAM) == EEXIST
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, RAM + 4) == EINVAL  # alignment is checked first


def test_eexist_is_checked_before_the_memslot():
    _, vcpu = fresh_vcpu()
    vcpu.set_device_attr(CTRL, IPA, RAM)
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, 0x1000_0000) == EEXIST


def test_ipa_outside_any_memslot_is_einval():
    _, vcpu = fresh_vcpu()
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, 0x1000_0000) == EINVAL
    assert vcpu.get_device_attr(CTRL, IPA) == INVALID_GPA  # nothing stored on failure


def test_ipa_in_a_read_only_memslot_is_einval():
    _, vcpu = fresh_vcpu(slots=((0, RAM, 0x10000, 0), (1, 0x0900_0000, 0x10000, KVM_MEM_READONLY)))
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, 0x0900_0000) == EINVAL
    vcpu.set_device_attr(CTRL, IPA, RAM + 0xFFC0)  # the last record of a writable slot is fine


def test_flags_are_ignored_and_there_is_no_way_to_clear():
    _, vcpu = fresh_vcpu()
    vcpu.set_device_attr(CTRL, IPA, RAM)
    assert errno_of(vcpu.set_device_attr, CTRL, IPA, INVALID_GPA & ~63) == EEXIST


def test_ipa_survives_vcpu_reset():
    _, vcpu = fresh_vcpu()
    vcpu.set_device_attr(CTRL, IPA, RAM)
    vcpu.init()
    vcpu.init(power_off=True)
    assert vcpu.get_device_attr(CTRL, IPA) == RAM


def test_set_is_allowed_after_the_vm_has_run():
    # Linux does not check that the vCPU has not run yet.
    f = fresh()
    run_once(f)
    f.vcpu.set_device_attr(CTRL, IPA, RAM)


def test_error_message_names_the_problem():
    _, vcpu = fresh_vcpu()
    with pytest.raises(KvmError, match="not 64-byte aligned"):
        vcpu.set_device_attr(CTRL, IPA, RAM + 1)


def test_a_vcpu_may_be_created_after_the_vm_has_run():
    # Linux refuses a late KVM_CREATE_VCPU only once an in-kernel vGIC is initialised.
    f = fresh()
    run_once(f)
    late = f.vm.create_vcpu(1)
    late.set_device_attr(CTRL, IPA, RAM + 64)
    assert errno_of(f.vm.create_vcpu, 1) == EEXIST
