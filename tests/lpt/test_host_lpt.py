"""The LPT VM attributes, the once-per-start record update, and the hypercalls (REFERENCE 5)."""

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
from pvtime.cpu.backend import Conduit
from pvtime.host import Host
from pvtime.kvm import Kvm, KvmError, Quirk

RAM = 0x4000_0000
NEG1 = smccc.to_u64(smccc.NOT_SUPPORTED)


def fresh_vm(*, protected=False, hz=25_000_000):
    host = Host(hz)
    vm = Kvm(host).create_vm(protected=protected)
    vm.set_user_memory_region(0, RAM, 0x10000, bytearray(0x10000))
    vm.set_user_memory_region(1, RAM + 0x10000, 0x1000, bytearray(0x1000), KVM_MEM_READONLY)
    vm.create_vcpu(0)
    return host, vm


def errno_of(fn, *args):
    with pytest.raises(KvmError) as err:
        fn(*args)
    return err.value.errno


def first_run(host, vm):
    task = host.spawn("vcpu0")
    with host.on_cpu(task, 0):
        return vm.vcpus[0].run()


def call(host, vm, x0, x1=0):
    regs = [x0, x1, 0, 0]
    with host.on_cpu(host.spawn("caller"), 0):
        vm.vcpus[0].hypercall(regs, Conduit.HVC, 0)
    return regs[0]


def record(vm):
    return LptRecord.unpack(vm.memory.read(vm.lpt.ipa, 48))


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
    host, vm = fresh_vm()
    vm.set_device_attr(CTRL, which, RAM if which == IPA else 10**9)
    assert errno_of(first_run, host, vm) == EINVAL
    assert not vm.has_run and not vm.lpt_ready()


def test_record_updated_once_per_start_before_any_entry():
    host, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM + 128)
    vm.set_device_attr(CTRL, FREQ, 100_000_000)
    assert call(host, vm, smccc.PV_TIME_LPT) == NEG1  # not before the start
    assert call(host, vm, smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT) == NEG1
    first_run(host, vm)
    first_run(host, vm)  # a second KVM_RUN is not another start
    rec = record(vm)
    sf = fixedpoint.scale_factors(25_000_000, 100_000_000)
    assert rec == LptRecord(sequence_number=2, **sf.record_fields())
    assert (rec.fracbits, rec.scale_mult, rec.rfracbits, rec.rscale_mult) == (61, 2**63, 63, 2**61)
    assert call(host, vm, smccc.PV_TIME_LPT) == RAM + 128
    assert call(host, vm, smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT) == 0


def test_pv_time_lpt_x1_must_be_zero():
    host, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    first_run(host, vm)
    assert call(host, vm, smccc.PV_TIME_LPT, 1) == smccc.to_u64(smccc.INVALID_PARAMETER)
    assert call(host, vm, smccc.PV_TIME_LPT, 1 << 32) == RAM  # x1 is a u32: upper bits ignored


def test_lpt_hidden_by_the_firmware_bitmap():
    host, vm = fresh_vm()
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP
    vm.vcpus[0].set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
    first_run(host, vm)
    assert call(host, vm, smccc.PV_TIME_LPT) == NEG1


def test_migrated_record_with_another_pv_freq_is_refused():
    host, vm = fresh_vm()
    mem = vm.memory
    mem.write(RAM, LptRecord(sequence_number=2, **fixedpoint.scale_factors(10**9, 50_000_000).record_fields()).pack())
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    with pytest.raises(KvmError) as err:
        first_run(host, vm)
    assert err.value.errno == EINVAL and "pv_freq 50000000" in str(err.value)


def test_sequence_advances_by_two_per_start_and_keeps_bit0_clear():
    host, vm = fresh_vm()
    prev = LptRecord(sequence_number=2**64 - 2, **fixedpoint.scale_factors(25_000_000, 10**9).record_fields())
    vm.memory.write(RAM, prev.pack())
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    first_run(host, vm)
    assert record(vm).sequence_number == 0  # wraps modulo 2^64, bit 0 stays reserved


def st_features(quirks):
    from tests.conftest import make_env
    env = make_env(1)
    env.vm.enable_quirks(quirks)
    return env.call(0, smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)[0], env.call(0, smccc.PV_TIME_ST)[0]


def test_stolen_time_supported_without_lpt_and_the_rfc_defect_as_a_quirk():
    assert st_features(Quirk.NONE) == (0, 0x090A_0000)  # LPT not configured: ST still offered
    assert st_features(Quirk.LPT_ST_NEEDS_LPT)[0] == NEG1  # the RFC's defect, on request


def test_lpt_needs_no_schedstats():
    host = Host(25_000_000, schedstats=False)
    vm = Kvm(host).create_vm()
    vm.set_user_memory_region(0, RAM, 0x10000, bytearray(0x10000))
    vm.create_vcpu(0)
    vm.set_device_attr(CTRL, IPA, RAM)
    vm.set_device_attr(CTRL, FREQ, 10**9)
    assert errno_of(vm.vcpus[0].set_device_attr, KVM_ARM_VCPU_PVTIME_CTRL, 0, RAM + 64) == ENXIO
    first_run(host, vm)
    assert struct.unpack_from("<Q", vm.memory.read(RAM + 8, 8))[0] == 2
