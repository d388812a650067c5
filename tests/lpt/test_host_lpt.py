"""The LPT VM attributes, the once-per-start record update, and the hypercalls (docs/semantics.md section 5)."""

import struct

import pytest

from pvtime import fixedpoint
from pvtime.abi import smccc
from pvtime.abi.errno import EEXIST, EFAULT, EINVAL, ENXIO
from pvtime.abi.records import LptRecord
from pvtime.abi.uapi import (
    INVALID_GPA, KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VM_PVTIME_LPT_CTRL as CTRL,
    KVM_ARM_VM_PVTIME_LPT_FREQ as FREQ, KVM_ARM_VM_PVTIME_LPT_IPA as IPA, KVM_MEM_READONLY,
)
from pvtime.host import Host
from pvtime.kvm import Kvm, KvmError, Quirk
from tests.conftest import ScriptCpu, run_guest_code

RAM = 0x4000_0000
NEG1 = smccc.to_u64(smccc.NOT_SUPPORTED)


class Fresh:
    """A VM with RAM (and a read-only page after it) and one vCPU, whose guest code tests write."""

    def __init__(self, *, protected=False, hz=25_000_000, schedstats=True):
        self.host = Host(hz, schedstats=schedstats)
        self.cpu = ScriptCpu(0)
        self.vm = Kvm(self.host).create_vm(protected=protected, cpu=lambda i: self.cpu)
        self.ram = bytearray(0x10000)
        self.vm.set_user_memory_region(0, RAM, 0x10000, self.ram)
        self.vm.set_user_memory_region(1, RAM + 0x10000, 0x1000, bytearray(0x1000), KVM_MEM_READONLY)
        self.vcpu = self.vm.create_vcpu(0)
        self.task = self.host.spawn("vcpu0")


def fresh_vm(**kw):
    f = Fresh(**kw)
    return f, f.vm


def errno_of(fn, *args):
    with pytest.raises(KvmError) as err:
        fn(*args)
    return err.value.errno


def first_run(f):
    """A KVM_RUN with no guest code (the vCPU has no program: it stops at once)."""
    with f.host.on_cpu(f.task, 0):
        return f.vcpu.run()


def call(f, x0, x1=0):
    """The guest's HVC, in a KVM_RUN; its x0."""
    view = f.cpu.view
    return run_guest_code(f.host, f.task, f.vcpu, f.cpu, lambda: view.hvc(x0, x1))[1][0]


def record(f):
    ipa = f.vm.get_device_attr(CTRL, IPA)
    return LptRecord.unpack(bytes(f.ram[ipa - RAM:ipa - RAM + 48]))


def test_set_get_has():
    _, vm = fresh_vm()
    assert vm.get_device_attr(CTRL, IPA) == INVALID_GPA and vm.get_device_attr(CTRL, FREQ) == 0
    vm.has_device_attr(CTRL, IPA)
    vm.has_device_attr(CTRL, FREQ)
    vm.set_device_attr(CTRL, IPA, (RAM + 64).to_bytes(8, "little"))
    vm.set_device_attr(CTRL, FREQ, (10**9).to_bytes(4, "little"))
    assert vm.get_device_attr(CTRL, IPA) == RAM + 64 and vm.get_device_attr(CTRL, FREQ) == 10**9


@pytest.mark.parametrize("attr,value,errno", [
    (IPA, RAM + 32, EINVAL),  # not 64-byte aligned
    (IPA, RAM + 0x20000, EINVAL),  # outside every memslot
    (IPA, RAM + 0x10000, EINVAL),  # read-only memslot
    (IPA, b"\x00" * 7, EFAULT),
    (IPA, -1, EFAULT),
    (IPA, None, EFAULT),
    (FREQ, 0, EINVAL),
    (FREQ, b"\x01\x00", EFAULT),
    (FREQ, 1 << 32, EFAULT),
    (FREQ, True, EFAULT),
    (7, 0, ENXIO),  # unknown attribute (before the value is read)
])
def test_set_errno(attr, value, errno):
    _, vm = fresh_vm()
    assert errno_of(vm.set_device_attr, CTRL, attr, value) == errno


def test_eexist_once_set_and_misaligned_second_set_is_einval():
    _, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    assert errno_of(vm.set_device_attr, CTRL, IPA, RAM + 64) == EEXIST
    assert errno_of(vm.set_device_attr, CTRL, IPA, RAM + 65) == EINVAL
    assert errno_of(vm.set_device_attr, CTRL, FREQ, 10**9) == EEXIST
    assert errno_of(vm.set_device_attr, CTRL, FREQ, 0) == EINVAL


def test_unknown_group_and_attribute_and_protected_vm_are_enxio():
    _, vm = fresh_vm()
    for group in (1, 99):
        assert errno_of(vm.set_device_attr, group, IPA, RAM) == ENXIO
        assert errno_of(vm.get_device_attr, group, IPA) == ENXIO
        assert errno_of(vm.has_device_attr, group, IPA) == ENXIO
    assert errno_of(vm.get_device_attr, CTRL, 2) == ENXIO
    assert errno_of(vm.has_device_attr, CTRL, 2) == ENXIO
    _, pvm = fresh_vm(protected=True)
    assert errno_of(pvm.set_device_attr, CTRL, IPA, RAM) == ENXIO
    assert errno_of(pvm.has_device_attr, CTRL, FREQ) == ENXIO


@pytest.mark.parametrize("which", [IPA, FREQ])
def test_only_one_set_at_first_run_fails_the_run_with_einval(which):
    f, vm = fresh_vm()
    vm.set_device_attr(CTRL, which, RAM if which == IPA else 10**9)
    assert errno_of(first_run, f) == EINVAL
    assert errno_of(first_run, f) == EINVAL  # a failed first run is no start: tried again
    vm.set_device_attr(CTRL, FREQ if which == IPA else IPA, 10**9 if which == IPA else RAM)
    first_run(f)  # the start, at last
    assert record(f).sequence_number == 2


def test_record_updated_once_per_start_before_any_entry():
    f, vm = fresh_vm()  # no LPT: not offered
    assert call(f, smccc.PV_TIME_LPT) == NEG1
    assert call(f, smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT) == NEG1
    f, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM + 128)
    vm.set_device_attr(CTRL, FREQ, 100_000_000)
    assert call(f, smccc.PV_TIME_LPT) == RAM + 128  # the first guest code already sees it
    first_run(f)  # a second KVM_RUN is not another start
    rec = record(f)
    sf = fixedpoint.scale_factors(25_000_000, 100_000_000)
    assert rec == LptRecord(sequence_number=2, **sf.record_fields())
    assert (rec.fracbits, rec.scale_mult, rec.rfracbits, rec.rscale_mult) == (61, 2**63, 63, 2**61)
    assert call(f, smccc.PV_TIME_LPT) == RAM + 128
    assert call(f, smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT) == 0


def test_pv_time_lpt_x1_must_be_zero():
    f, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    first_run(f)
    assert call(f, smccc.PV_TIME_LPT, 1) == smccc.to_u64(smccc.INVALID_PARAMETER)
    assert call(f, smccc.PV_TIME_LPT, 1 << 32) == RAM  # x1 is a u32: upper bits ignored


def test_lpt_hidden_by_the_firmware_bitmap():
    f, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP
    f.vcpu.set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
    first_run(f)
    assert call(f, smccc.PV_TIME_LPT) == NEG1


def test_migrated_record_with_another_pv_freq_is_refused():
    f, vm = fresh_vm()
    f.ram[:48] = LptRecord(sequence_number=2, **fixedpoint.scale_factors(10**9, 50_000_000).record_fields()).pack()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    with pytest.raises(KvmError) as err:
        first_run(f)
    assert err.value.errno == EINVAL and "pv_freq 50000000" in str(err.value)


def test_sequence_advances_by_two_per_start_and_keeps_bit0_clear():
    f, vm = fresh_vm()
    prev = LptRecord(sequence_number=2**64 - 2, **fixedpoint.scale_factors(25_000_000, 10**9).record_fields())
    f.ram[:48] = prev.pack()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    first_run(f)
    assert record(f).sequence_number == 0  # wraps modulo 2^64, bit 0 stays reserved


def st_features(quirks):
    from tests.conftest import make_env
    env = make_env(1)
    env.vm.enable_quirks(quirks)
    return env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)[0], env.call(0, smccc.PV_TIME_ST)[0]


def test_stolen_time_supported_without_lpt_and_the_rfc_defect_as_a_quirk():
    assert st_features(Quirk.NONE) == (0, 0x090A_0000)  # LPT not configured: ST still offered
    assert st_features(Quirk.LPT_ST_NEEDS_LPT)[0] == NEG1  # the RFC's defect, on request


def test_lpt_needs_no_schedstats():
    f = Fresh(schedstats=False)
    f.vm.set_device_attr(CTRL, IPA, RAM)
    f.vm.set_device_attr(CTRL, FREQ, 10**9)
    assert errno_of(f.vcpu.set_device_attr, KVM_ARM_VCPU_PVTIME_CTRL, 0, RAM + 64) == ENXIO
    first_run(f)
    assert struct.unpack_from("<Q", f.ram, 8)[0] == 2
