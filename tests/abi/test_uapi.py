"""uAPI constants and register ids, checked against Linux's values."""

from pvtime.abi import errno, uapi


def test_errno_values_are_linux():
    assert (errno.ENOENT, errno.ENXIO, errno.EFAULT, errno.EBUSY, errno.EEXIST, errno.EINVAL) == (2, 6, 14, 16, 17, 22)


def test_pv_time_constants():
    assert uapi.KVM_ARM_VCPU_PVTIME_CTRL == 2 and uapi.KVM_ARM_VCPU_PVTIME_IPA == 0
    assert uapi.KVM_CAP_STEAL_TIME == 187
    assert uapi.KVM_REG_ARM_STD_HYP_BMAP == 0x6030000000160001
    assert uapi.KVM_ARM_VM_PVTIME_LPT_CTRL == 0
    assert (uapi.KVM_ARM_VM_PVTIME_LPT_IPA, uapi.KVM_ARM_VM_PVTIME_LPT_FREQ) == (0, 1)


def test_core_register_ids_follow_struct_kvm_regs():
    # arm64 KVM: id = 0x6030_0000_0010_0000 | offsetof(struct kvm_regs, field) / 4
    assert uapi.reg_x(0) == 0x6030000000100000
    assert uapi.reg_x(30) == 0x603000000010003C
    assert uapi.REG_SP == 0x603000000010003E
    assert uapi.REG_PC == 0x6030000000100040
    assert uapi.REG_PSTATE == 0x6030000000100042
    assert uapi.REG_SP_EL1 == 0x6030000000100044
    assert uapi.reg_size(uapi.REG_PC) == 8


def test_timer_register_ids_match_linux():
    # The historical CNT/CVAL swap of KVM_REG_ARM_TIMER_{CNT,CVAL}.
    assert uapi.KVM_REG_ARM_TIMER_CTL == 0x603000000013DF19
    assert uapi.KVM_REG_ARM_TIMER_CNT == 0x603000000013DF1A
    assert uapi.KVM_REG_ARM_TIMER_CVAL == 0x603000000013DF02
