"""copy_from_user as KVM does it: a value passed by address is read as the bytes there, whatever
the item size of the buffer that holds them (include/linux/uaccess.h: copy_from_user copies
KVM_REG_SIZE(id) or sizeof(u32/u64) bytes, never items)."""

from array import array

from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ, KVM_REG_ARM_STD_HYP_BMAP, reg_x,
)
from tests.conftest import make_env


def test_set_device_attr_copies_a_u32_from_a_view_of_wider_items():
    """kvm_arm_pvtime_lpt_set_attr (FREQ): get_user of a u32 -- 4 bytes, not 4 items."""
    env = make_env(1)
    env.vm.set_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ, memoryview(array("I", [1] * 4)))
    assert env.vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ) == 1


def test_set_one_reg_copies_register_size_bytes_from_a_view_of_wider_items():
    """set_core_reg / set_fw_reg: copy_from_user of KVM_REG_SIZE(id) bytes."""
    env = make_env(1)
    vcpu = env.vcpu(0)
    vcpu.set_one_reg(reg_x(1), memoryview(array("Q", [(1 << 64) - 1] * 8)))  # 64 bytes
    assert vcpu.get_one_reg(reg_x(1)) == (1 << 64) - 1
    vcpu.set_one_reg(reg_x(2), memoryview(array("I", [7, 1])))  # 8 bytes: a u64 of 2^32 + 7
    assert vcpu.get_one_reg(reg_x(2)) == (1 << 32) + 7
    vcpu.set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, memoryview(array("Q", [1, 1])))
    assert vcpu.get_one_reg(KVM_REG_ARM_STD_HYP_BMAP) == 1
