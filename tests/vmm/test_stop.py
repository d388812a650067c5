"""Why the VMM stopped a VM: each reason reads exactly as the VMM has always reported it."""

import pytest

from pvtime.abi.uapi import KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN
from pvtime.kvm.errors import KvmError
from pvtime.vmm import StopReason, StopReasonKind


@pytest.mark.parametrize(("reason", "text", "kind"), [
    (StopReason.guest_exit(3), "guest exit 3 (semihosting)", StopReasonKind.GUEST_EXIT),
    (StopReason.semihosting_error(1, "SYS_WRITE0 at 0x10: not in RAM"),
     "vcpu1: semihosting: SYS_WRITE0 at 0x10: not in RAM", StopReasonKind.SEMIHOSTING_ERROR),
    (StopReason.system_event(KVM_SYSTEM_EVENT_SHUTDOWN), "system event 1", StopReasonKind.SYSTEM_EVENT),
    (StopReason.kvm_run_failed(0, KvmError(22, "LPT: half configured")),
     f"vcpu0: KVM_RUN: {KvmError(22, 'LPT: half configured')}", StopReasonKind.KVM_RUN_FAILED),
    (StopReason.internal_error(2, "undefined instruction at pc=0x40080000"),
     "vcpu2: undefined instruction at pc=0x40080000", StopReasonKind.INTERNAL_ERROR),
    (StopReason.migrated("127.0.0.1:4444"), "migrated to 127.0.0.1:4444", StopReasonKind.MIGRATED),
])
def test_each_reason_reads_as_the_vmm_reports_it(reason: StopReason, text: str, kind: StopReasonKind) -> None:
    assert str(reason) == text and f"{reason}" == text
    assert reason.kind is kind
    assert StopReason(reason.kind, reason.detail, reason.vcpu) == reason  # a value: kind, detail, vCPU


def test_a_power_off_is_psci_system_off_only() -> None:
    assert StopReason.system_event(KVM_SYSTEM_EVENT_SHUTDOWN).is_power_off
    assert not StopReason.system_event(KVM_SYSTEM_EVENT_RESET).is_power_off
    assert not StopReason.guest_exit(KVM_SYSTEM_EVENT_SHUTDOWN).is_power_off
