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
from pvtime.cpu.fastpath import HypercallAnswer
from pvtime.kvm import lpt, psci, pvtime
from pvtime.kvm.errors import KvmError
from pvtime.kvm.trace import HypercallEvent

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps
    from pvtime.kvm.vm import VmState

_PV_TIME_IDS = frozenset({smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST, smccc.PV_TIME_LPT})


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
    """Serve one SMCCC call in place on x0..x3, then publish it on the VM's tracepoint."""
    fid = regs[0] & U32
    vcpu.stats.hypercalls += 1
    args = (regs[0], regs[1], regs[2], regs[3])
    baseline_reset = False
    if conduit is Conduit.SMC and imm != 0:
        regs[0] = U64
    else:
        baseline_reset = _dispatch(vcpu, fid, regs)
    trace = vcpu.vm.hypercall_trace
    if trace:
        trace.publish(HypercallEvent(vcpu.id, fid, args, (regs[0], regs[1], regs[2], regs[3]), baseline_reset))


# Calls without side effects whose answers depend only on the VM's configuration, which a
# running vCPU cannot change: (function id, x1 & U32, or None where the call ignores x1).
_CONSTANT_CALLS: tuple[tuple[int, int | None], ...] = (
    (smccc.SMCCC_VERSION, None),
    (smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES),
    (smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES),
    (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST),
    (smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT),
)


def constant_answers(vcpu: Traps) -> tuple[HypercallAnswer, ...]:
    """What `handle` answers now to each HVC of `_CONSTANT_CALLS` (the dispatch itself computes
    them), for a backend to answer them without calling it; none while the VM's hypercall
    tracepoint has observers, which must see every call."""
    if vcpu.vm.hypercall_trace:
        return ()
    answers = []
    for fid, x1 in _CONSTANT_CALLS:
        regs = [fid, x1 or 0, 0, 0]
        _dispatch(vcpu, fid, regs)
        answers.append(HypercallAnswer(fid, x1, (regs[0], regs[1], regs[2], regs[3])))
    return tuple(answers)


def _dispatch(vcpu: Traps, fid: int, regs: list[int]) -> bool:
    """The SMCCC services: every handled call sets x0..x3. True if the call reset the vCPU's
    stolen-time baseline (a PV_TIME_ST that KVM served)."""
    result = [smccc.NOT_SUPPORTED, 0, 0, 0]
    baseline_reset = False
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
        baseline_reset = gpa != INVALID_GPA
        result[0] = gpa if baseline_reset else smccc.NOT_SUPPORTED
    elif fid == smccc.PV_TIME_LPT:
        result[0] = lpt.ipa_for_guest(vcpu.vm, regs[1])
    elif psci.is_psci(fid):
        result[0] = psci.call(vcpu, fid, regs)
    regs[:] = [smccc.to_u64(v) for v in result]
    return baseline_reset
