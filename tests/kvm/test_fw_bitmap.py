"""The firmware bitmap pseudo-register KVM_REG_ARM_STD_HYP_BMAP (arch/arm64/kvm/hypercalls.c)."""

import pytest

from pvtime.abi.errno import EBUSY, EFAULT, EINVAL, ENOENT
from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP as BMAP, KVM_REG_SIZE_MASK, KVM_REG_SIZE_U32
from pvtime.kvm import KvmError
from tests.conftest import make_env


def errno_of(fn, *args):
    with pytest.raises(KvmError) as err:
        fn(*args)
    return err.value.errno


def run_once(env):
    env.load(0)  # one KVM_RUN of vCPU 0: the VM has run


def test_resets_to_all_supported_bits_per_vm():
    a, b = make_env(1), make_env(1)
    assert a.vcpu(0).get_one_reg(BMAP) == 1
    a.vcpu(0).set_one_reg(BMAP, 0)
    assert a.vcpu(0).get_one_reg(BMAP) == 0
    assert b.vcpu(0).get_one_reg(BMAP) == 1


def test_the_bitmap_is_per_vm_not_per_vcpu():
    env = make_env(2)
    env.vcpu(0).set_one_reg(BMAP, 0)
    assert env.vcpu(1).get_one_reg(BMAP) == 0


def test_wrong_size_is_enoent():
    env = make_env(1)
    u32_id = (BMAP & ~KVM_REG_SIZE_MASK) | KVM_REG_SIZE_U32
    assert errno_of(env.vcpu(0).set_one_reg, u32_id, 0) == ENOENT
    assert errno_of(env.vcpu(0).get_one_reg, u32_id) == ENOENT


def test_unreadable_value_is_efault_and_size_is_checked_first():
    env = make_env(1)
    assert errno_of(env.vcpu(0).set_one_reg, BMAP, None) == EFAULT
    assert errno_of(env.vcpu(0).set_one_reg, BMAP, b"\0\0\0") == EFAULT


def test_unsupported_bits_are_einval():
    env = make_env(1)
    assert errno_of(env.vcpu(0).set_one_reg, BMAP, 0b10) == EINVAL
    assert errno_of(env.vcpu(0).set_one_reg, BMAP, 1 << 63) == EINVAL


def test_after_the_vm_has_run_a_change_is_ebusy_and_an_equal_value_is_accepted():
    env = make_env(2)
    run_once(env)
    assert errno_of(env.vcpu(1).set_one_reg, BMAP, 0) == EBUSY  # any vCPU of the VM
    env.vcpu(1).set_one_reg(BMAP, 1)
    env.vcpu(0).set_one_reg(BMAP, (1).to_bytes(8, "little"))


def test_einval_comes_before_ebusy():
    env = make_env(1)
    run_once(env)
    assert errno_of(env.vcpu(0).set_one_reg, BMAP, 0b11) == EINVAL


def test_unknown_register_is_enoent():
    env = make_env(1)
    assert errno_of(env.vcpu(0).get_one_reg, BMAP + 7) == ENOENT
    assert errno_of(env.vcpu(0).set_one_reg, BMAP + 7, 0) == ENOENT


def test_vcpu_limits_are_reported_as_kvm_does() -> None:
    """KVM_CHECK_EXTENSION: KVM_CAP_NR_VCPUS is min(host CPUs, KVM_MAX_VCPUS), KVM_CAP_MAX_VCPUS
    the arm64 limit of 512, which KVM_CREATE_VCPU enforces (kvm_vm_ioctl_check_extension)."""
    import pytest

    from pvtime.abi.uapi import KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS
    from pvtime.host import Host
    from pvtime.kvm import Kvm, KvmError

    kvm = Kvm(Host(ncpus=6))
    vm = kvm.create_vm()
    for fd in (kvm, vm):
        assert fd.check_extension(KVM_CAP_NR_VCPUS) == 6 and fd.check_extension(KVM_CAP_MAX_VCPUS) == 512
    with pytest.raises(KvmError):
        vm.create_vcpu(512)
