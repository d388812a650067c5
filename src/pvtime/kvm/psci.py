"""PSCI 1.1 over HVC/SMC, as KVM implements it for arm64 guests (arch/arm64/kvm/psci.c).

vCPUs are addressed by their MPIDR, packed as KVM's reset_mpidr does
(`pvtime.kvm.traps.reset_mpidr`: 16 per Aff0, so MPIDR 0x100 is vCPU 16).

CPU_SUSPEND is kvm_psci_vcpu_suspend: every power state is treated as standby, the vCPU blocks
as a WFI does until an interrupt is pending (at once if one already is), and the call returns
SUCCESS when it resumes, registers preserved. CPU_ON resets the target as kvm_reset_vcpu does
(registers, CNTKCTL_EL1, both timers' CTL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.widths import U32
from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps

MPIDR_HWID_BITMASK = 0xFF_00FF_FFFF  # Aff3..Aff0
_SMC64 = 1 << 30

PSCI_IDS = frozenset({
    smccc.PSCI_VERSION, smccc.PSCI_CPU_SUSPEND, smccc.PSCI_CPU_OFF, smccc.PSCI_CPU_ON,
    smccc.PSCI_AFFINITY_INFO, smccc.PSCI_MIGRATE_INFO_TYPE, smccc.PSCI_SYSTEM_OFF,
    smccc.PSCI_SYSTEM_RESET, smccc.PSCI_FEATURES, smccc.PSCI_SYSTEM_RESET2,
})
# The SMC32 aliases of the calls that take arguments wider than 32 bits: their x1..x3 are
# narrowed to 32 bits (kvm_psci_narrow_to_32bit).
_SMC32_ALIASES = {fid & ~_SMC64: fid for fid in (
    smccc.PSCI_CPU_SUSPEND, smccc.PSCI_CPU_ON, smccc.PSCI_AFFINITY_INFO, smccc.PSCI_SYSTEM_RESET2)}


def is_psci(fid: int) -> bool:
    """Does this function id belong to the PSCI calls KVM implements?"""
    return fid in PSCI_IDS or fid in _SMC32_ALIASES


def call(vcpu: Traps, fid: int, regs: list[int]) -> int:
    """Handle one PSCI call; returns the signed value for x0."""
    args = list(regs[1:4])
    if fid in _SMC32_ALIASES:
        fid = _SMC32_ALIASES[fid]
        args = [a & U32 for a in args]
    if fid == smccc.PSCI_VERSION:
        return smccc.PSCI_VERSION_1_1
    if fid == smccc.PSCI_FEATURES:
        feature = args[0] & U32
        known = feature in PSCI_IDS or feature in _SMC32_ALIASES or feature == smccc.SMCCC_VERSION
        return smccc.PSCI_SUCCESS if known else smccc.PSCI_NOT_SUPPORTED
    if fid == smccc.PSCI_CPU_SUSPEND:
        vcpu.wfi()
        return smccc.PSCI_SUCCESS
    if fid == smccc.PSCI_CPU_OFF:
        vcpu.power_off()
        return smccc.PSCI_SUCCESS
    if fid == smccc.PSCI_CPU_ON:
        return _cpu_on(vcpu, *args)
    if fid == smccc.PSCI_AFFINITY_INFO:
        return _affinity_info(vcpu, args[0], args[1])
    if fid == smccc.PSCI_MIGRATE_INFO_TYPE:
        return smccc.PSCI_TOS_MP
    if fid == smccc.PSCI_SYSTEM_OFF:
        return _system_event(vcpu, KVM_SYSTEM_EVENT_SHUTDOWN)
    if fid == smccc.PSCI_SYSTEM_RESET:
        return _system_event(vcpu, KVM_SYSTEM_EVENT_RESET)
    if fid == smccc.PSCI_SYSTEM_RESET2:
        reset_type = args[0] & U32
        if reset_type == 0 or reset_type >> 31:  # SYSTEM_WARM_RESET, or a vendor-specific reset
            return _system_event(vcpu, KVM_SYSTEM_EVENT_RESET)
        return smccc.PSCI_INVALID_PARAMETERS
    return smccc.PSCI_NOT_SUPPORTED


def _system_event(vcpu: Traps, event_type: int) -> int:
    """kvm_prepare_system_event: every vCPU stops, the caller exits to the VMM.

    x0 is preloaded with INTERNAL_FAILURE: the guest only sees it if the VMM resumes the vCPU
    instead of acting on the event.
    """
    for other in vcpu.vm.vcpus:
        other.power_off()
    vcpu.request_system_event(event_type)
    return smccc.PSCI_INTERNAL_FAILURE


def _affinity_mask(level: int) -> int:
    """psci_affinity_mask: the affinity fields at and above `level` (0..3)."""
    shift = ((1 << level) >> 1) << 3  # MPIDR_LEVEL_SHIFT: 0, 8, 16, 32
    return MPIDR_HWID_BITMASK & ~((1 << shift) - 1)


def _cpu_on(vcpu: Traps, mpidr: int, entry: int, context_id: int) -> int:
    if mpidr & ~MPIDR_HWID_BITMASK:
        return smccc.PSCI_INVALID_PARAMETERS
    target = next((v for v in vcpu.vm.vcpus if v.mpidr & MPIDR_HWID_BITMASK == mpidr), None)
    if target is None:
        return smccc.PSCI_INVALID_PARAMETERS
    if not target.powered_off:
        return smccc.PSCI_ALREADY_ON
    target.power_on(entry, context_id)
    return smccc.PSCI_SUCCESS


def _affinity_info(vcpu: Traps, mpidr: int, lowest_level: int) -> int:
    """ON if any vCPU matching `mpidr` at `lowest_level` and above is on; OFF if all are off."""
    if mpidr & ~MPIDR_HWID_BITMASK or lowest_level > 3:
        return smccc.PSCI_INVALID_PARAMETERS
    mask = _affinity_mask(lowest_level)
    matching = [v for v in vcpu.vm.vcpus if v.mpidr & mask == mpidr & mask]
    if not matching:
        return smccc.PSCI_INVALID_PARAMETERS
    return smccc.AFFINITY_ON if any(not v.powered_off for v in matching) else smccc.AFFINITY_OFF
