"""PSCI 1.1 over HVC/SMC, as KVM implements it for arm64 guests (arch/arm64/kvm/psci.c).

MPIDR affinity equals the vCPU index (Aff0), as KVM's default vCPU MPIDR for small VMs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN

if TYPE_CHECKING:
    from pvtime.kvm.vcpu import Vcpu

PSCI_IDS = frozenset({
    smccc.PSCI_VERSION, smccc.PSCI_CPU_OFF, smccc.PSCI_CPU_ON, smccc.PSCI_AFFINITY_INFO,
    smccc.PSCI_SYSTEM_OFF, smccc.PSCI_SYSTEM_RESET, smccc.PSCI_FEATURES,
})
# The 32-bit aliases of the calls that take addresses/MPIDRs (bit 30 clear).
_SMC32_ALIASES = {
    smccc.PSCI_CPU_ON & ~(1 << 30): smccc.PSCI_CPU_ON,
    smccc.PSCI_AFFINITY_INFO & ~(1 << 30): smccc.PSCI_AFFINITY_INFO,
}


def is_psci(fid: int) -> bool:
    """Does this function id belong to the PSCI calls KVM implements?"""
    return fid in PSCI_IDS or fid in _SMC32_ALIASES


def call(vcpu: Vcpu, fid: int, regs: list[int]) -> int:
    """Handle one PSCI call; returns the signed value for x0."""
    fid = _SMC32_ALIASES.get(fid, fid)
    if fid == smccc.PSCI_VERSION:
        return smccc.PSCI_VERSION_1_1
    if fid == smccc.PSCI_FEATURES:
        feature = regs[1] & 0xFFFF_FFFF
        # PSCI_FEATURES(SMCCC_VERSION) == 0 is how a guest learns SMCCC >= 1.1 exists.
        return 0 if feature in PSCI_IDS or feature == smccc.SMCCC_VERSION else smccc.PSCI_NOT_SUPPORTED
    if fid == smccc.PSCI_CPU_OFF:
        vcpu.power_off()
        return smccc.PSCI_SUCCESS
    if fid == smccc.PSCI_CPU_ON:
        return _cpu_on(vcpu, regs[1], regs[2], regs[3])
    if fid == smccc.PSCI_AFFINITY_INFO:
        return _affinity_info(vcpu, regs[1], regs[2])
    if fid == smccc.PSCI_SYSTEM_OFF:
        vcpu.request_system_event(KVM_SYSTEM_EVENT_SHUTDOWN)
        return smccc.PSCI_SUCCESS
    if fid == smccc.PSCI_SYSTEM_RESET:
        vcpu.request_system_event(KVM_SYSTEM_EVENT_RESET)
        return smccc.PSCI_SUCCESS
    return smccc.PSCI_NOT_SUPPORTED


def _target(vcpu: Vcpu, mpidr: int) -> Vcpu | None:
    """The vCPU whose MPIDR affinity matches (Aff3..Aff0; other bits ignored)."""
    aff = mpidr & 0xFF_00FF_FFFF
    for other in vcpu.vm.vcpus:
        if other.mpidr & 0xFF_00FF_FFFF == aff:
            return other
    return None


def _cpu_on(vcpu: Vcpu, mpidr: int, entry: int, context_id: int) -> int:
    target = _target(vcpu, mpidr)
    if target is None:
        return smccc.PSCI_INVALID_PARAMETERS
    if not target.powered_off:
        return smccc.PSCI_ALREADY_ON
    target.power_on(entry, context_id)
    return smccc.PSCI_SUCCESS


def _affinity_info(vcpu: Vcpu, mpidr: int, lowest_level: int) -> int:
    if lowest_level != 0:
        return smccc.PSCI_INVALID_PARAMETERS  # KVM only answers for level 0 (a single vCPU)
    target = _target(vcpu, mpidr)
    if target is None:
        return smccc.PSCI_INVALID_PARAMETERS
    return smccc.AFFINITY_OFF if target.powered_off else smccc.AFFINITY_ON
