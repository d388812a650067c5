"""Why the VMM stopped a VM: a kind to act on, and the detail to show."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pvtime.abi.uapi import KVM_SYSTEM_EVENT_SHUTDOWN


class StopReasonKind(Enum):
    """What stopped the VM; the value is how a `StopReason` of this kind reads."""

    GUEST_EXIT = "guest exit {detail} (semihosting)"  # detail: the guest's exit status
    SEMIHOSTING_ERROR = "vcpu{vcpu}: semihosting: {detail}"  # a call the VMM could not serve
    SYSTEM_EVENT = "system event {detail}"  # detail: the KVM_SYSTEM_EVENT type (PSCI SYSTEM_OFF/RESET)
    KVM_RUN_FAILED = "vcpu{vcpu}: KVM_RUN: {detail}"  # the ioctl failed (e.g. LPT half configured)
    INTERNAL_ERROR = "vcpu{vcpu}: {detail}"  # KVM_EXIT_INTERNAL_ERROR, or an access no device answers
    MIGRATED = "migrated to {detail}"  # detail: where the VM went


@dataclass(frozen=True)
class StopReason:
    """Why a VM stopped; `str()` is the line the VMM reports."""

    kind: StopReasonKind
    detail: int | str
    vcpu: int | None = None  # the vCPU that stopped it, for the kinds that name one

    def __str__(self) -> str:
        return self.kind.value.format(vcpu=self.vcpu, detail=self.detail)

    @classmethod
    def guest_exit(cls, status: int) -> StopReason:
        """The guest exited through semihosting with `status`."""
        return cls(StopReasonKind.GUEST_EXIT, status)

    @classmethod
    def system_event(cls, event_type: int) -> StopReason:
        """A vCPU returned KVM_EXIT_SYSTEM_EVENT of `event_type`."""
        return cls(StopReasonKind.SYSTEM_EVENT, event_type)

    @classmethod
    def migrated(cls, to: str) -> StopReason:
        """The VM now runs at `to`."""
        return cls(StopReasonKind.MIGRATED, to)

    @classmethod
    def semihosting_error(cls, vcpu: int, error: str) -> StopReason:
        """vCPU `vcpu` made a semihosting call the VMM could not serve."""
        return cls(StopReasonKind.SEMIHOSTING_ERROR, error, vcpu)

    @classmethod
    def kvm_run_failed(cls, vcpu: int, err: Exception) -> StopReason:
        """KVM_RUN on vCPU `vcpu` raised `err`."""
        return cls(StopReasonKind.KVM_RUN_FAILED, str(err), vcpu)

    @classmethod
    def internal_error(cls, vcpu: int, error: object) -> StopReason:
        """vCPU `vcpu` cannot go on: an internal-error exit, or an access no device answers."""
        return cls(StopReasonKind.INTERNAL_ERROR, str(error), vcpu)

    @property
    def is_power_off(self) -> bool:
        """The guest powered the VM off (PSCI SYSTEM_OFF: KVM_SYSTEM_EVENT_SHUTDOWN)."""
        return self.kind is StopReasonKind.SYSTEM_EVENT and self.detail == KVM_SYSTEM_EVENT_SHUTDOWN
