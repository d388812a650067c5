"""A VM fd: memslots, vCPUs, VM attributes, quirks -- and `VmState`, what the hypervisor keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pvtime.abi.errno import EEXIST, EINVAL, ENXIO
from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS, KVM_CAP_STEAL_TIME, KVM_MAX_VCPUS,
    KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED,
)
from pvtime.cpu import CpuKind, create_cpu
from pvtime.cpu.backend import CpuBackend, CpuFactory
from pvtime.host.host import Host
from pvtime.kvm.arch_timer import VmCounter
from pvtime.kvm import lpt
from pvtime.kvm.errors import KvmError
from pvtime.kvm.memory import GuestMemory
from pvtime.kvm.quirks import Quirk
from pvtime.kvm.trace import HypercallObserver, HypercallTracepoint
from pvtime.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps



def vcpu_limits(cap: int, host_cpus: int) -> int:
    """KVM_CAP_NR_VCPUS (min(host CPUs, KVM_MAX_VCPUS)) and KVM_CAP_MAX_VCPUS; 0 for other caps."""
    if cap == KVM_CAP_NR_VCPUS:
        return min(host_cpus, KVM_MAX_VCPUS)
    if cap == KVM_CAP_MAX_VCPUS:
        return KVM_MAX_VCPUS
    return 0


class VmState:
    """One VM as the hypervisor keeps it (struct kvm); kvm-internal: a VMM holds the `Vm` fd."""

    def __init__(self, host: Host, name: str, *, protected: bool) -> None:
        self.host = host
        self.name = name
        self.protected = protected
        self.memory = GuestMemory()
        self.vcpus: list[Traps] = []
        self.counter = VmCounter()
        self.std_hyp_bmap = KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED  # resets to all supported bits
        self.quirks = Quirk.NONE
        self.has_run = False
        self.hypercall_trace = HypercallTracepoint()
        self.lpt = lpt.LptState()

    def pvtime_supported(self) -> bool:
        """kvm_arm_pvtime_supported: the host keeps scheduler statistics and the VM is not protected."""
        return self.host.schedstats and not self.protected

    def guest_counter_hz(self) -> int:
        """CNTFRQ_EL0 as the guest reads it: the host's counter frequency."""
        return self.host.counter_hz

    def note_first_run(self) -> None:
        """Called on every KVM_RUN; the first one updates the LPT record (once per VM start,
        before any guest entry; a KvmError fails that run) and freezes the VM's configuration."""
        if not self.has_run:
            lpt.vm_start(self)
        self.has_run = True


class Vm:
    """A virtual machine; create it with `Kvm.create_vm`."""

    def __init__(self, host: Host, name: str, *, protected: bool, cpu: CpuFactory | None,
                 release: Callable[[Vm], None]) -> None:
        self._state = VmState(host, name, protected=protected)
        self._cpu = cpu or _model_cpu
        self._release = release
        self._vcpus: list[Vcpu] = []

    def __repr__(self) -> str:
        return f"Vm({self._state.name})"

    @property
    def name(self) -> str:
        """The name the VM was created with."""
        return self._state.name

    def subscribe_hypercalls(self, observer: HypercallObserver) -> None:
        """Call `observer` with a `HypercallEvent` after each SMCCC call of this VM's vCPUs (the
        kvm_hvc_arm64 tracepoint); it must not change state. ValueError if already subscribed."""
        self._state.hypercall_trace.subscribe(observer)

    def unsubscribe_hypercalls(self, observer: HypercallObserver) -> None:
        """Stop calling `observer`; ValueError if it is not subscribed."""
        self._state.hypercall_trace.unsubscribe(observer)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace: bytearray | memoryview | None, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: back `memory_size` bytes at `guest_phys_addr` with `userspace`."""
        self._state.memory.set_region(slot, guest_phys_addr, memory_size, userspace, flags)

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the bitmap of pages written in `slot` (a slot with
        KVM_MEM_LOG_DIRTY_PAGES) since the last call, which clears it and write-protects again."""
        return self._state.memory.get_dirty_log(slot)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU; the vCPU executes guest code on the engine the VM's CPU factory makes."""
        if not 0 <= vcpu_id < KVM_MAX_VCPUS:
            raise KvmError(EINVAL, f"vCPU id {vcpu_id}: must be in 0..{KVM_MAX_VCPUS - 1}")
        if any(v.id == vcpu_id for v in self._vcpus):
            raise KvmError(EEXIST, f"vCPU {vcpu_id} already exists")
        # Linux refuses a late vCPU only once an in-kernel vGIC is initialised; pvtime has none.
        vcpu = Vcpu(self._state, vcpu_id, self._cpu(vcpu_id))
        self._vcpus.append(vcpu)
        return vcpu

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd."""
        if cap == KVM_CAP_STEAL_TIME:
            return int(self._state.pvtime_supported())
        return vcpu_limits(cap, self._state.host.ncpus)

    def enable_quirks(self, quirks: Quirk) -> None:
        """Reproduce the named Linux defects in this VM (see `Quirk`)."""
        self._state.quirks |= quirks

    # Live Physical Time: VM attribute group KVM_ARM_VM_PVTIME_LPT_CTRL (pvtime.kvm.lpt).
    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR on the VM fd; `value` is the int (or bytes) at attr.addr."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        lpt.set_attr(self._state, attr, value)

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR on the VM fd."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        return lpt.get_attr(self._state, attr)

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR on the VM fd: returns if supported, raises ENXIO otherwise."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        lpt.has_attr(self._state, attr)

    def close(self) -> None:
        """close() of the VM fd and its vCPU fds: KVM destroys the VM (kvm_destroy_vm), e.g. the
        half-built VM of a refused migration. Its memory stays the VMM's; the VM and its vCPUs
        must not be used afterwards. Closing twice does nothing."""
        self._release(self)


def _model_cpu(index: int) -> CpuBackend:
    """The default CPU factory: a model CPU (for a Python model program)."""
    return create_cpu(CpuKind.MODEL, index)
