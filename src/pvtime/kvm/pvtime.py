"""Stolen time, as Linux's arch/arm64/kvm/pvtime.c keeps it: per-vCPU IPA, updates, attributes.

The value is always re-read from guest memory and written back (never cached in the host),
which is what carries it across save/restore and migration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pvtime.abi.widths import U64
from pvtime.abi import smccc
from pvtime.abi.errno import EEXIST, EINVAL, ENXIO
from pvtime.abi.records import STEAL_RECORD_ALIGN, STEAL_RECORD_SIZE, STEAL_TIME_OFFSET
from pvtime.abi.uapi import INVALID_GPA, KVM_ARM_VCPU_PVTIME_IPA
from pvtime.host.task import Task
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user
from pvtime.kvm.memory import GuestMemory
from pvtime.kvm.quirks import Quirk



@dataclass
class StealState:
    """vcpu->arch.steal: the record's IPA and the run_delay baseline (and whose it is)."""

    base: int = INVALID_GPA
    last_steal: int = 0
    task: Task | None = None  # the host task `last_steal` was read from
    cached: int = 0  # the host's own copy, used only by Quirk.STEAL_CACHED_IN_HOST


def set_ipa(steal: StealState, supported: bool, attr: int, value: object, memory: GuestMemory) -> None:
    """kvm_arm_pvtime_set_attr, with its checks in Linux's order."""
    if not supported or attr != KVM_ARM_VCPU_PVTIME_IPA:
        raise KvmError(ENXIO, f"PVTIME_CTRL attribute {attr}: not supported")
    ipa = read_user(value, 8, "PVTIME_IPA")
    if ipa % STEAL_RECORD_ALIGN:
        raise KvmError(EINVAL, f"PVTIME_IPA {ipa:#x} is not 64-byte aligned")
    if steal.base != INVALID_GPA:
        raise KvmError(EEXIST, f"PVTIME_IPA is already set to {steal.base:#x}")
    if not memory.writable_page(ipa):
        raise KvmError(EINVAL, f"PVTIME_IPA {ipa:#x} is not in a writable memslot")
    steal.base = ipa


def get_ipa(steal: StealState, supported: bool, attr: int) -> int:
    """kvm_arm_pvtime_get_attr: the IPA, all ones when unset."""
    if not supported or attr != KVM_ARM_VCPU_PVTIME_IPA:
        raise KvmError(ENXIO, f"PVTIME_CTRL attribute {attr}: not supported")
    return steal.base


def has_ipa(supported: bool, attr: int) -> None:
    """kvm_arm_pvtime_has_attr: returns when supported, else ENXIO."""
    if not (supported and attr == KVM_ARM_VCPU_PVTIME_IPA):
        raise KvmError(ENXIO, f"PVTIME_CTRL attribute {attr}: not supported")


def update_stolen_time(steal: StealState, task: Task, memory: GuestMemory, quirks: Quirk) -> None:
    """kvm_update_stolen_time: run at every vcpu_load once an IPA is set."""
    if steal.base == INVALID_GPA:
        return
    field = steal.base + STEAL_TIME_OFFSET
    raw = memory.read(field, 8)
    if raw is None:
        return  # the IPA is no longer backed: nothing at all, the baseline stays
    now = task.run_delay_ns
    if steal.task is not task and not (quirks and quirks & Quirk.STEAL_ACROSS_TASKS):
        # First load, or the vCPU moved to another thread: `last_steal` is not this task's
        # run_delay (Linux starts it at 0), so start anew from this task's sum rather than
        # adding its whole history or subtracting another task's total.
        steal.last_steal = now
    cached = quirks and quirks & Quirk.STEAL_CACHED_IN_HOST  # `quirks and`: skip Flag ops when NONE
    old = steal.cached if cached else struct.unpack("<Q", raw)[0]
    value = (old + now - steal.last_steal) & U64
    steal.last_steal, steal.task, steal.cached = now, task, value
    memory.write(field, struct.pack("<Q", value))


def init_stolen_time(steal: StealState, task: Task, memory: GuestMemory) -> int:
    """kvm_init_stolen_time (PV_TIME_ST): zero the record, baseline now; the IPA or INVALID_GPA."""
    if steal.base == INVALID_GPA:
        return INVALID_GPA
    steal.last_steal, steal.task, steal.cached = task.run_delay_ns, task, 0
    memory.write(steal.base, bytes(STEAL_RECORD_SIZE))
    return steal.base


def pv_features(steal: StealState, feature: int, lpt_ready: bool) -> int:
    """kvm_hypercall_pv_features: which PV-time calls this vCPU offers."""
    if feature in (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST):
        return smccc.SUCCESS if steal.base != INVALID_GPA else smccc.NOT_SUPPORTED
    if feature == smccc.PV_TIME_LPT and lpt_ready:
        return smccc.SUCCESS
    return smccc.NOT_SUPPORTED
