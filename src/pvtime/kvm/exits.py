"""What `Vcpu.run()` returns: the `struct kvm_run` exit, one class per reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pvtime.abi.uapi import ExitReason


@dataclass(frozen=True)
class MmioExit:
    """KVM_EXIT_MMIO: a load or store to an address no memslot serves.

    For a read, the VMM supplies `len` bytes with `Vcpu.complete_mmio(data)` before the next
    `run()`; the PC has then moved past the access, as KVM does.
    """

    reason: ClassVar[ExitReason] = ExitReason.MMIO
    phys_addr: int
    len: int
    data: bytes
    is_write: bool


@dataclass(frozen=True)
class SystemEventExit:
    """KVM_EXIT_SYSTEM_EVENT: PSCI SYSTEM_OFF (type 1) or SYSTEM_RESET (type 2)."""

    reason: ClassVar[ExitReason] = ExitReason.SYSTEM_EVENT
    type: int


@dataclass(frozen=True)
class InternalErrorExit:
    """KVM_EXIT_INTERNAL_ERROR: the vCPU stopped; `pc`, `instruction` and `reason` say where and why."""

    reason: ClassVar[ExitReason] = ExitReason.INTERNAL_ERROR
    suberror: int
    pc: int
    instruction: str
    detail: str

    def __str__(self) -> str:
        insn = f" ({self.instruction})" if self.instruction else ""
        return f"vCPU internal error at pc={self.pc:#x}{insn}: {self.detail}"


@dataclass(frozen=True)
class HaltExit:
    """The vCPU is halted (WFI, or powered off): its thread blocks until `wake_at_ns`.

    `wake_at_ns` is None when only an event can wake it: another vCPU's PSCI CPU_ON, or (with a
    vGIC) an interrupt made pending for it, which wakes the thread (`Host.wake`). Linux blocks
    the thread inside KVM_RUN; here the thread's loop blocks and re-enters `run()`.
    """

    reason: ClassVar[ExitReason] = ExitReason.HLT
    wake_at_ns: int | None


@dataclass(frozen=True)
class IntrExit:
    """The host ended the vCPU thread's time slice; calling `run()` again is the schedule-in."""

    reason: ClassVar[ExitReason] = ExitReason.INTR


@dataclass(frozen=True)
class SemihostingExit:
    """Arm semihosting (`HLT #0xF000`), a debug facility the VMM serves, as QEMU does.

    KVM has no such exit (a real Arm CPU makes HLT undefined at EL1); pvtime reports it as
    KVM_EXIT_DEBUG. `op` is w0 and `param` x1; the PC is already past the HLT. The VMM writes
    the call's result to x0 with `set_one_reg(reg_x(0), value)` before the next `run()`.
    """

    reason: ClassVar[ExitReason] = ExitReason.DEBUG
    op: int
    param: int


Exit = MmioExit | SystemEventExit | InternalErrorExit | HaltExit | IntrExit | SemihostingExit
