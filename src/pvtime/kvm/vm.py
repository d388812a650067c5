"""A VM fd: memslots, vCPUs, VM attributes, quirks -- and `VmState`, what the hypervisor keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pvtime.abi.errno import EBUSY, EEXIST, EINVAL, ENXIO
from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_CAP_ARM_IRQ_LINE_LAYOUT_2, KVM_CAP_DEVICE_CTRL, KVM_CAP_IRQCHIP,
    KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO, KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS,
    KVM_CAP_STEAL_TIME, KVM_COALESCED_MMIO_PAGE_OFFSET, KVM_MAX_VCPUS, KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED,
)
from pvtime.cpu import CpuKind, create_cpu
from pvtime.cpu.backend import CpuBackend, CpuFactory
from pvtime.host.host import Host
from pvtime.kvm.arch_timer import TimerPpis, VmCounter
from pvtime.kvm import irq_line, lpt
from pvtime.kvm.coalesced_mmio import CoalescedMmio
from pvtime.kvm.errors import KvmError
from pvtime.kvm.memory import GuestMemory
from pvtime.kvm.quirks import Quirk
from pvtime.kvm.trace import HypercallObserver, HypercallTracepoint
from pvtime.kvm.vcpu import Vcpu
from pvtime.kvm.vgic import Vgic, VgicV2Device, device

if TYPE_CHECKING:
    from pvtime.kvm.traps import Traps

# Always 1 on arm64 with an in-kernel GIC (kvm_vm_ioctl_check_extension, and the generic
# kvm_vm_ioctl_check_extension_generic for coalesced port I/O).
_ARCH_CAPS = frozenset({KVM_CAP_IRQCHIP, KVM_CAP_DEVICE_CTRL, KVM_CAP_ARM_IRQ_LINE_LAYOUT_2, KVM_CAP_COALESCED_PIO})


def vcpu_limits(cap: int, host_cpus: int, max_vcpus: int = KVM_MAX_VCPUS) -> int:
    """KVM_CAP_NR_VCPUS (min(host CPUs, KVM_MAX_VCPUS)), KVM_CAP_MAX_VCPUS (the VM's limit: 8
    once it has a vGICv2), KVM_CAP_COALESCED_MMIO (the ring's page offset in a vCPU's mmap), the
    capabilities arm64 always has (1); 0 for other caps."""
    if cap == KVM_CAP_COALESCED_MMIO:
        return KVM_COALESCED_MMIO_PAGE_OFFSET
    if cap == KVM_CAP_NR_VCPUS:
        return min(host_cpus, KVM_MAX_VCPUS)
    if cap == KVM_CAP_MAX_VCPUS:
        return max_vcpus
    return int(cap in _ARCH_CAPS)


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
        self.vgic: Vgic | None = None  # the in-kernel interrupt controller, once created
        self.max_vcpus = KVM_MAX_VCPUS  # kvm->max_vcpus
        self.timer_ppis = TimerPpis()
        self.coalesced_mmio = CoalescedMmio()

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
        if len(self._vcpus) >= self._state.max_vcpus:
            raise KvmError(EINVAL, f"vCPU {vcpu_id}: the VM has {len(self._vcpus)} vCPUs, its limit "
                                   f"(a vGICv2 serves {self._state.max_vcpus}; GICv3 is not modelled yet)")
        vgic = self._state.vgic
        if vgic is not None and vgic.initialized:  # kvm_arch_vcpu_precreate
            raise KvmError(EBUSY, f"vCPU {vcpu_id}: the VM's vGIC is already initialised")
        if any(v.id == vcpu_id for v in self._vcpus):
            raise KvmError(EEXIST, f"vCPU {vcpu_id} already exists")
        vcpu = Vcpu(self._state, vcpu_id, self._cpu(vcpu_id))
        self._vcpus.append(vcpu)
        return vcpu

    def register_coalesced_mmio(self, addr: int, size: int, pio: int = 0) -> None:
        """KVM_REGISTER_COALESCED_MMIO: guest stores wholly inside `size` bytes at `addr` go to the
        VM's ring (`Vcpu.coalesced_mmio_ring`) instead of exiting, while it has room. EINVAL for a
        `pio` other than 0 or 1; ENOSPC when the MMIO bus is full."""
        vgic = self._state.vgic
        in_kernel = 1 if vgic is not None and vgic.ready else 0  # vgic_register_dist_iodev's device
        self._state.coalesced_mmio.register(addr, size, pio, mmio_devices=in_kernel)

    def unregister_coalesced_mmio(self, addr: int, size: int, pio: int = 0) -> None:
        """KVM_UNREGISTER_COALESCED_MMIO: drop every zone holding the whole range (none: no error);
        EINVAL for a `pio` other than 0 or 1. Stores already in the ring stay there."""
        self._state.coalesced_mmio.unregister(addr, size, pio)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd."""
        if cap == KVM_CAP_STEAL_TIME:
            return int(self._state.pvtime_supported())
        return vcpu_limits(cap, self._state.host.ncpus, self._state.max_vcpus)

    def create_device(self, device_type: int, flags: int = 0) -> VgicV2Device | None:
        """KVM_CREATE_DEVICE: the device fd of an in-kernel vGICv2 (KVM_DEV_TYPE_ARM_VGIC_V2, the
        only type pvtime models: GICv3 is ENODEV). With KVM_CREATE_DEVICE_TEST in `flags`, only
        checks the type and returns None. EEXIST for a second vGIC, EBUSY once a vCPU has run,
        E2BIG when the VM has more than the 8 vCPUs a GICv2 serves (which is then its limit)."""
        return device.create(self._state, device_type, flags)

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive an interrupt input (`pvtime.kvm.irq_line`); make `irq` with
        `pvtime.abi.uapi.kvm_arm_irq(type, vcpu_index, irq_id)`, `level` 0 (low) or not."""
        irq_line.irq_line(self._state, irq, level)

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
