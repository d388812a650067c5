"""A VM: memslots, vCPUs, the firmware bitmap, per-VM counter offsets, quirks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pvtime.abi.errno import EEXIST, EINVAL, ENXIO
from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_CAP_STEAL_TIME, KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED,
)
from pvtime.cpu import create_cpu
from pvtime.host.host import Host
from pvtime.kvm.arch_timer import VmCounter
from pvtime.kvm import lpt
from pvtime.kvm.errors import KvmError
from pvtime.kvm.memory import GuestMemory
from pvtime.kvm.quirks import Quirk
from pvtime.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from pvtime.kvm.system import Kvm

MAX_VCPUS = 512


class Vm:
    """A virtual machine; create it with `Kvm.create_vm`."""

    def __init__(self, kvm: Kvm, name: str, *, protected: bool = False, cpu: str = "model",
                 instructions_per_sec: int | None = None) -> None:
        self.kvm = kvm
        self.cpu_kind = cpu  # the CPU backend every vCPU of this VM uses ("model" or "unicorn")
        self.instructions_per_sec = instructions_per_sec  # unicorn: guest instructions per virtual s
        self.host: Host = kvm.host
        self.name = name
        self.protected = protected
        self.memory = GuestMemory()
        self.vcpus: list[Vcpu] = []
        self.counter = VmCounter()
        self.std_hyp_bmap = KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED  # resets to all supported bits
        self.quirks = Quirk.NONE
        self.has_run = False
        # A tracepoint (as kvm_hvc_arm64 / trace_kvm_smccc): called after each SMCCC call with
        # the vCPU, the function id and x0..x3 as returned. Observers must not change state.
        self.trace_hypercall: Callable[[Vcpu, int, list[int]], None] | None = None
        self.lpt = lpt.LptState()

    def __repr__(self) -> str:
        return f"Vm({self.name})"

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace: bytearray | memoryview | None, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: back `memory_size` bytes at `guest_phys_addr` with `userspace`."""
        self.memory.set_region(slot, guest_phys_addr, memory_size, userspace, flags)

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the bitmap of pages written in `slot` (a slot with
        KVM_MEM_LOG_DIRTY_PAGES) since the last call, which clears it and write-protects again."""
        return self.memory.get_dirty_log(slot)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU."""
        if not 0 <= vcpu_id < MAX_VCPUS:
            raise KvmError(EINVAL, f"vCPU id {vcpu_id}: must be in 0..{MAX_VCPUS - 1}")
        if any(v.id == vcpu_id for v in self.vcpus):
            raise KvmError(EEXIST, f"vCPU {vcpu_id} already exists")
        # Linux refuses a late vCPU only once an in-kernel vGIC is initialised; pvtime has none.
        vcpu = Vcpu(self, vcpu_id, create_cpu(self.cpu_kind, vcpu_id, instructions_per_sec=self.instructions_per_sec))
        self.vcpus.append(vcpu)
        return vcpu

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd."""
        if cap == KVM_CAP_STEAL_TIME:
            return int(self.pvtime_supported())
        return 0

    def enable_quirks(self, quirks: Quirk) -> None:
        """Reproduce the named Linux defects in this VM (see `Quirk`)."""
        self.quirks |= quirks

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

    # Live Physical Time: VM attribute group KVM_ARM_VM_PVTIME_LPT_CTRL (pvtime.kvm.lpt).
    def set_device_attr(self, group: int, attr: int, value: object) -> None:
        """KVM_SET_DEVICE_ATTR on the VM fd; `value` is the int (or bytes) at attr.addr."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        lpt.set_attr(self, attr, value)

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR on the VM fd."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        return lpt.get_attr(self, attr)

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR on the VM fd: returns if supported, raises ENXIO otherwise."""
        if group != KVM_ARM_VM_PVTIME_LPT_CTRL:
            raise KvmError(ENXIO, f"VM attribute group {group}: unknown")
        lpt.has_attr(self, attr)

    def lpt_ready(self) -> bool:
        """Has this VM's LPT record been updated (PV_TIME_FEATURES(LPT) answers 0)?"""
        return self.lpt.updated
