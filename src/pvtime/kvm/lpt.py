"""Live Physical Time on the host (the 2020 "pvtime LPT" RFC, docs/semantics.md section 5), without its defects.

One 48-byte record per VM, at an IPA the VMM chooses (``KVM_ARM_VM_PVTIME_LPT_IPA``), for a PV
counter frequency the VMM chooses (``KVM_ARM_VM_PVTIME_LPT_FREQ``). Once per VM start -- at the
first KVM_RUN of any of its vCPUs, before that vCPU enters the guest -- the host reads the record
from guest RAM, bumps ``sequence_number`` by 2, and writes this host's native frequency and the
scale factors (:func:`pvtime.fixedpoint.scale_factors`, the one home of the arithmetic). A record
that has been through a start before (``sequence_number != 0``) is a restored or migrated one:
its ``pv_freq`` must be the configured one, and its ``native_freq`` is the frequency the guest's
counters and timers were last expressed in. If that differs from this host's, the host rescales,
for the whole VM:

- the virtual counter (CNTVOFF) and the physical counter (the per-VM ``poffset``), so that the
  guest's PV counter, ``native_to_pv(counter)``, continues where it was
  (:func:`pvtime.fixedpoint.rescale_count`: exact ratio, rounded so it never steps back);
- every vCPU's CNTV_CVAL and CNTP_CVAL, as absolute PV deadlines
  (:func:`pvtime.fixedpoint.rescale_deadline`): never early, no 32-bit delta, and a timer that had
  expired stays expired.

How the counters are kept continuous. ``CNTPCT = host counter - poffset`` and ``CNTVCT = host
counter - CNTVOFF`` are both per VM and independent (as KVM keeps them since Linux 6.4). The restoring VMM writes
``KVM_REG_ARM_PTIMER_CNT`` and ``KVM_REG_ARM_TIMER_CNT`` with the source's values (in the
source's ticks); each write records an *anchor* ``(value, host count at the write)``
(:class:`pvtime.kvm.arch_timer.VmCounter`). At the first run the host maps each anchor's value to
the new frequency and recomputes the offset so the counter read that rescaled value at the
anchor's instant and has advanced at the new host's rate since. So the rescale does not depend on
how long the VM waited between restore and first run (the RFC's ``cntvct * f_new / f_old`` taken
at first run would also scale the ticks counted at the new rate in between). Without an anchor
(no counter was restored) the counter's value at first run is used, as the RFC does.

The VM attribute group number (0) is the RFC's; since Linux 6.4 group 0 of the VM fd is
``KVM_ARM_VM_SMCCC_CTRL`` (the SMCCC filter), which pvtime does not implement.

The RFC's defects are available as named quirks (:class:`pvtime.kvm.quirks.Quirk`), off by
default: ``LPT_U32_PENDING_DELTA``, ``LPT_VTIMER_ONLY``, ``LPT_ST_NEEDS_LPT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvtime.abi.widths import U32, U64
from pvtime import fixedpoint
from pvtime.abi import smccc
from pvtime.abi.errno import EEXIST, EFAULT, EINVAL, ENXIO
from pvtime.abi.records import LPT_RECORD_ALIGN, LPT_RECORD_SIZE, LptRecord
from pvtime.abi.uapi import INVALID_GPA, KVM_ARM_VM_PVTIME_LPT_FREQ, KVM_ARM_VM_PVTIME_LPT_IPA
from pvtime.kvm import pvtime
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user
from pvtime.kvm.quirks import Quirk

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps
    from pvtime.kvm.vm import VmState

_ATTRS = {KVM_ARM_VM_PVTIME_LPT_IPA: "LPT_IPA", KVM_ARM_VM_PVTIME_LPT_FREQ: "LPT_FREQ"}


@dataclass
class LptState:
    """The VM's LPT configuration and whether this start has updated the record."""

    ipa: int = INVALID_GPA
    pv_hz: int = 0  # 0: not set
    updated: bool = False  # the record was written for this VM start (PV_TIME_LPT answers)
    rescaled_from_hz: int | None = None  # the native frequency this start rescaled from, if any

    @property
    def configured(self) -> bool:
        """Both attributes are set."""
        return self.ipa != INVALID_GPA and self.pv_hz != 0


def supported(vm: VmState) -> bool:
    """LPT needs no scheduler statistics; like PV time it is not offered to protected VMs."""
    return not vm.protected


def _check_attr(ok: bool, attr: int) -> str:
    name = _ATTRS.get(attr)
    if not ok or name is None:
        raise KvmError(ENXIO, f"PVTIME_LPT_CTRL attribute {attr}: not supported")
    return name


def set_attr(vm: VmState, attr: int, value: object) -> None:
    """KVM_SET_DEVICE_ATTR in group KVM_ARM_VM_PVTIME_LPT_CTRL (checks in the ST attribute's order).

    IPA (u64): ENXIO unsupported/unknown attribute, EFAULT unreadable, EINVAL not 64-byte aligned,
    EEXIST already set, EINVAL not in a writable memslot. FREQ (u32): ENXIO, EFAULT, EINVAL if 0,
    EEXIST already set.
    """
    state: LptState = vm.lpt
    name = _check_attr(supported(vm), attr)
    if attr == KVM_ARM_VM_PVTIME_LPT_IPA:
        ipa = read_user(value, 8, name)
        if ipa % LPT_RECORD_ALIGN:
            raise KvmError(EINVAL, f"{name} {ipa:#x} is not {LPT_RECORD_ALIGN}-byte aligned")
        if state.ipa != INVALID_GPA:
            raise KvmError(EEXIST, f"{name} is already set to {state.ipa:#x}")
        if not vm.memory.writable_page(ipa):
            raise KvmError(EINVAL, f"{name} {ipa:#x} is not in a writable memslot")
        state.ipa = ipa
    else:
        hz = read_user(value, 4, name)
        if hz == 0:
            raise KvmError(EINVAL, f"{name}: the PV frequency must be non-zero")
        if state.pv_hz != 0:
            raise KvmError(EEXIST, f"{name} is already set to {state.pv_hz} Hz")
        state.pv_hz = hz


def get_attr(vm: VmState, attr: int) -> int:
    """KVM_GET_DEVICE_ATTR: the IPA (all ones when unset) or the PV frequency (0 when unset)."""
    _check_attr(supported(vm), attr)
    return vm.lpt.ipa if attr == KVM_ARM_VM_PVTIME_LPT_IPA else vm.lpt.pv_hz


def has_attr(vm: VmState, attr: int) -> None:
    """KVM_HAS_DEVICE_ATTR: returns for IPA and FREQ when LPT is supported, else ENXIO."""
    _check_attr(supported(vm), attr)


def ipa_for_guest(vm: VmState, flags: int) -> int:
    """PV_TIME_LPT: x1 (u32) must be 0; the IPA once this start has updated the record, else -1."""
    if flags & U32:
        return smccc.INVALID_PARAMETER
    return vm.lpt.ipa if vm.lpt.updated else smccc.NOT_SUPPORTED


def pv_features(vcpu: Traps, feature: int) -> int:
    """PV_TIME_FEATURES: the stolen-time answers do not depend on LPT (the RFC's defect is a quirk)."""
    vm = vcpu.vm
    if (vm.quirks & Quirk.LPT_ST_NEEDS_LPT and feature == smccc.PV_TIME_ST
            and not vm.lpt.configured):
        return smccc.NOT_SUPPORTED
    return pvtime.pv_features(vcpu.steal, feature, vm.lpt.updated)


def vm_start(vm: VmState) -> None:
    """The once-per-start update, run at the VM's first KVM_RUN before any guest entry.

    Raises KvmError(EINVAL) when only one of IPA and FREQ is set or when a migrated record's
    ``pv_freq`` (or ``native_freq``) is unusable, and KvmError(EFAULT) when the record cannot be
    read or written; nothing is changed then, and the run fails.
    """
    state: LptState = vm.lpt
    if state.ipa == INVALID_GPA and state.pv_hz == 0:
        return
    if not state.configured:
        missing = "LPT_FREQ" if state.pv_hz == 0 else "LPT_IPA"
        raise KvmError(EINVAL, f"LPT is half configured at first run: {missing} is not set")
    raw = vm.memory.read(state.ipa, LPT_RECORD_SIZE)
    if raw is None or not vm.memory.writable_page(state.ipa):
        raise KvmError(EFAULT, f"LPT record at {state.ipa:#x} is no longer in a writable memslot")
    record = LptRecord.unpack(raw)
    new = fixedpoint.scale_factors(vm.host.counter_hz, state.pv_hz)
    old = None
    if record.sequence_number != 0:  # the record has been through a start: restored or migrated
        if record.pv_freq != state.pv_hz:
            raise KvmError(EINVAL, f"LPT record at {state.ipa:#x} has pv_freq {record.pv_freq} Hz, "
                                   f"the VM is configured for {state.pv_hz} Hz")
        try:
            old = fixedpoint.scale_factors(record.native_freq, record.pv_freq)
        except ValueError as err:
            raise KvmError(EINVAL, f"LPT record at {state.ipa:#x}: native_freq unusable ({err})") from None
    if old is not None and old.native_hz != new.native_hz:
        _rescale(vm, old, new)
        state.rescaled_from_hz = old.native_hz
    vm.counter.v_anchor = vm.counter.p_anchor = None
    sequence = (record.sequence_number + 2) & U64 & ~1  # bit 0 is reserved
    vm.memory.write(state.ipa, LptRecord(sequence_number=sequence, **new.record_fields()).pack())
    state.updated = True


def _rescale(vm: VmState, old: fixedpoint.ScaleFactors, new: fixedpoint.ScaleFactors) -> None:
    """Counters and every vCPU's compare values, from `old`'s native ticks to `new`'s."""
    counter = vm.counter
    now = vm.host.counter()
    p_old, p_at = counter.p_anchor or ((now - counter.poffset) & U64, now)
    v_old, v_at = counter.v_anchor or ((now - counter.voffset) & U64, now)
    vtimer_only = bool(vm.quirks & Quirk.LPT_VTIMER_ONLY)
    p_new = fixedpoint.rescale_count(p_old, old, new)
    v_new = fixedpoint.rescale_count(v_old, old, new)
    if not vtimer_only:
        counter.poffset = (p_at - p_new) & U64
    counter.voffset = (v_at - v_new) & U64
    for vcpu in vm.vcpus:
        timers = [(vcpu.timer.vtimer, v_old, v_new)]
        if not vtimer_only:
            timers.append((vcpu.timer.ptimer, p_old, p_new))
        for timer, count_old, count_new in timers:
            if vm.quirks & Quirk.LPT_U32_PENDING_DELTA:
                delta = (timer.cval - count_old) & U32  # the RFC's u32 pending delta
                timer.cval = (count_new + delta * new.native_hz // old.native_hz) & U64
            else:
                timer.cval = fixedpoint.rescale_deadline(timer.cval, old, new)
