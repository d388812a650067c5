"""SMCCC dispatch (arch/arm64/kvm/hypercalls.c) and the firmware feature bitmap register.

Every handled call sets x0..x3; unknown ids answer x0 = -1 with x1..x3 = 0. An SMC with a
non-zero immediate answers x0 = ~0 and leaves x1..x3 alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.widths import U32, U64
from pvtime.abi import smccc
from pvtime.abi.errno import EBUSY, EINVAL
from pvtime.abi.uapi import INVALID_GPA, KVM_REG_ARM_STD_HYP_BIT_PV_TIME, KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED
from pvtime.cpu.backend import Conduit
from pvtime.kvm import lpt, psci, pvtime
from pvtime.kvm.errors import KvmError

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps
    from pvtime.kvm.vm import VmState

_PV_TIME_IDS = frozenset({smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST, smccc.PV_TIME_LPT})


def pv_time_st_succeeded(fid: int, regs: list[int]) -> bool:
    """For a hypercall tracepoint: was this a PV_TIME_ST that moved the steal baseline?"""
    return fid == smccc.PV_TIME_ST and regs[0] != smccc.to_u64(smccc.NOT_SUPPORTED)


def pv_time_visible(vm: VmState) -> bool:
    """The VM's STD_HYP bitmap exposes PV time."""
    return bool(vm.std_hyp_bmap >> KVM_REG_ARM_STD_HYP_BIT_PV_TIME & 1)


def set_std_hyp_bmap(vm: VmState, value: int) -> None:
    """kvm_arm_set_fw_reg_bmap for KVM_REG_ARM_STD_HYP_BMAP (size and EFAULT checked by the caller)."""
    if value & ~KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED:
        raise KvmError(EINVAL, f"STD_HYP_BMAP {value:#x}: unsupported bits "
                               f"{value & ~KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED:#x}")
    if vm.has_run and value != vm.std_hyp_bmap:
        raise KvmError(EBUSY, "STD_HYP_BMAP: a vCPU of this VM has run; the bitmap is frozen")
    vm.std_hyp_bmap = value


def handle(vcpu: Traps, regs: list[int], conduit: Conduit, imm: int) -> None:
    """Serve one SMCCC call in place on x0..x3."""
    fid = regs[0] & U32
    vcpu.stats.hypercalls += 1
    if conduit is Conduit.SMC and imm != 0:
        regs[0] = U64
    else:
        _dispatch(vcpu, fid, regs)
    trace = vcpu.vm.trace_hypercall
    if trace is not None:
        trace(vcpu.fd, fid, regs)


def _dispatch(vcpu: Traps, fid: int, regs: list[int]) -> None:
    """The SMCCC services: every handled call sets x0..x3."""
    result = [smccc.NOT_SUPPORTED, 0, 0, 0]
    if fid in _PV_TIME_IDS and not pv_time_visible(vcpu.vm):
        pass  # hidden by the firmware bitmap: answered as an unknown id
    elif fid == smccc.SMCCC_VERSION:
        result[0] = smccc.SMCCC_VERSION_1_1
    elif fid == smccc.SMCCC_ARCH_FEATURES:
        feature = regs[1] & U32
        if feature == smccc.PV_TIME_FEATURES and pv_time_visible(vcpu.vm):
            result[0] = smccc.SUCCESS
    elif fid == smccc.PV_TIME_FEATURES:
        result[0] = lpt.pv_features(vcpu, regs[1] & U32)
    elif fid == smccc.PV_TIME_ST:
        gpa = pvtime.init_stolen_time(vcpu.steal, vcpu.current_task(), vcpu.vm.memory)
        result[0] = gpa if gpa != INVALID_GPA else smccc.NOT_SUPPORTED
    elif fid == smccc.PV_TIME_LPT:
        result[0] = lpt.ipa_for_guest(vcpu.vm, regs[1])
    elif psci.is_psci(fid):
        result[0] = psci.call(vcpu, fid, regs)
    regs[:] = [smccc.to_u64(v) for v in result]
