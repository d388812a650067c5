"""KVM_SET_ONE_REG's and kvm_run.mmio's errno on any backend (arch/arm64/kvm/guest.c:
kvm_arm_set_reg, set_core_reg, core_reg_size_from_offset)."""

import pytest

from pvtime.abi.errno import EINVAL, ENOENT
from pvtime.abi.uapi import REG_PC, REG_PSTATE
from pvtime.kvm import KvmError
from tests.conftest import make_env


def _errno(call, *args) -> int:
    with pytest.raises(KvmError) as err:
        call(*args)
    return err.value.errno


@pytest.mark.parametrize("mode", [0b00001, 0b01000, 0b01001, 0b10000, 0b10011, 0b11111])
def test_set_core_reg_refuses_a_pstate_mode_the_vcpu_has_not(mode):
    """set_core_reg: PSTATE.M (PSR_AA32_MODE_MASK) not EL0t/EL1t/EL1h on an AArch64 vCPU is EINVAL."""
    vcpu = make_env(1).vcpu(0)
    before = vcpu.get_one_reg(REG_PSTATE)
    assert _errno(vcpu.set_one_reg, REG_PSTATE, 0x3C0 | mode) == EINVAL
    assert vcpu.get_one_reg(REG_PSTATE) == before
    vcpu.set_one_reg(REG_PSTATE, 0xF000_0000_0000_03C5)  # accepted as a whole u64, as Linux memcpy's it
    assert vcpu.get_one_reg(REG_PSTATE) == 0xF000_0000_0000_03C5


def test_one_reg_ids_with_bits_outside_the_core_offset_are_refused():
    """kvm_arm_set_reg: upper half not KVM_REG_ARM64 is EINVAL; core_reg_offset_from_id keeps bits
    28..31 in the offset, which is then past struct kvm_regs: ENOENT (no alias of PC)."""
    vcpu = make_env(1).vcpu(0)
    for call, args in ((vcpu.set_one_reg, (REG_PC | 1 << 28, 4)), (vcpu.get_one_reg, (REG_PC | 1 << 28,))):
        assert _errno(call, *args) == ENOENT
    for reg_id in (REG_PC | 1 << 40, REG_PC ^ 1 << 61):
        assert _errno(vcpu.set_one_reg, reg_id, 4) == EINVAL
        assert _errno(vcpu.get_one_reg, reg_id) == EINVAL


def test_complete_mmio_with_no_read_exit_pending_is_einval():
    vcpu = make_env(1).vcpu(0)
    assert _errno(vcpu.complete_mmio, b"\0\0\0\0") == EINVAL


def test_mpidr_is_a_one_reg_register_that_a_vcpu_reset_restores():
    # arch/arm64/kvm/sys_regs.c: MPIDR_EL1 is in sys_reg_descs with reset_mpidr and no set_user,
    # so KVM_GET_REG_LIST lists it, userspace may write any value, and kvm_reset_vcpu resets it.
    from pvtime.abi.uapi import KVM_REG_ARM_MPIDR_EL1
    from tests.conftest import make_env

    env = make_env(18)
    vcpu = env.vcpu(17)
    assert vcpu.get_one_reg(KVM_REG_ARM_MPIDR_EL1) == (1 << 31) | (1 << 8) | 1  # Aff1 = 1, Aff0 = 1
    vcpu.set_one_reg(KVM_REG_ARM_MPIDR_EL1, 0x8000_0205)
    assert vcpu.get_one_reg(KVM_REG_ARM_MPIDR_EL1) == 0x8000_0205
    vcpu.init()
    assert vcpu.get_one_reg(KVM_REG_ARM_MPIDR_EL1) == (1 << 31) | (1 << 8) | 1
