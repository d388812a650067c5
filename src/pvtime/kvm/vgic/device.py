"""The KVM_DEV_TYPE_ARM_VGIC_V2 device: creation and its attribute groups, with the errno values
and check order of arch/arm64/kvm/vgic/vgic-kvm-device.c and vgic-init.c.

Only a GICv2 is modelled: KVM_DEV_TYPE_ARM_VGIC_V3 (and the ITS) is ENODEV, as on a host whose
GIC cannot emulate one, and a VM with a vGIC has at most 8 vCPUs (VGIC_V2_MAX_CPUS): creating the
vGIC when the VM has more is E2BIG, creating a 9th vCPU afterwards EINVAL (kvm->max_vcpus).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.errno import E2BIG, EBUSY, EEXIST, EINVAL, ENODEV, ENXIO
from pvtime.abi.uapi import (
    KVM_CREATE_DEVICE_TEST, KVM_DEV_ARM_VGIC_CPUID_MASK, KVM_DEV_ARM_VGIC_CPUID_SHIFT,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CPU_REGS,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_DEV_ARM_VGIC_OFFSET_MASK, KVM_DEV_TYPE_ARM_VGIC_ITS, KVM_DEV_TYPE_ARM_VGIC_V2,
    KVM_DEV_TYPE_ARM_VGIC_V3, KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST,
    KVM_VGIC_V2_CPU_SIZE, KVM_VGIC_V2_DIST_SIZE, VGIC_ADDR_UNDEF, VGIC_V2_MAX_CPUS,
)
from pvtime.abi.gic import NR_PRIVATE_IRQS
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user
from pvtime.kvm.vgic.dist import Vgic
from pvtime.kvm.vgic.mmio import CPU_USER_REGIONS, DIST_REGIONS, Region, has_register, user_access

if TYPE_CHECKING:
    from pvtime.kvm.vm import VmState

VGIC_MAX_RESERVED = 1023  # GRP_NR_IRQS is at most this (so 992 in steps of 32)
FRAME_ALIGN = 0x1000  # both frames are 4 KiB aligned (SZ_4K)


def create(vm: VmState, device_type: int, flags: int) -> VgicV2Device | None:
    """KVM_CREATE_DEVICE (kvm_ioctl_create_device, then kvm_vgic_create); None for a
    KVM_CREATE_DEVICE_TEST probe of a type that exists."""
    if device_type != KVM_DEV_TYPE_ARM_VGIC_V2:
        what = "GICv3 is not modelled yet" if device_type in (KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_TYPE_ARM_VGIC_ITS) \
            else "no such device type"
        raise KvmError(ENODEV, f"KVM_CREATE_DEVICE type {device_type}: {what}")
    if flags & KVM_CREATE_DEVICE_TEST:
        return None
    if any(v.running for v in vm.vcpus):
        raise KvmError(EBUSY, "vGIC: a vCPU is in KVM_RUN (lock_all_vcpus)")
    if vm.vgic is not None:
        raise KvmError(EEXIST, "vGIC: the VM already has an in-kernel interrupt controller")
    if vm.has_run:
        raise KvmError(EBUSY, "vGIC: a vCPU has already run")
    if len(vm.vcpus) > VGIC_V2_MAX_CPUS:
        raise KvmError(E2BIG, f"vGICv2: the VM has {len(vm.vcpus)} vCPUs, a GICv2 serves at most "
                              f"{VGIC_V2_MAX_CPUS} (GICv3 is not modelled yet)")
    vm.max_vcpus = VGIC_V2_MAX_CPUS
    vm.vgic = Vgic(vm)
    return VgicV2Device(vm, vm.vgic)


class VgicV2Device:
    """A vGICv2 device fd (`Vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2)`)::

        gic = vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, 0x0800_0000)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, 0x0801_0000)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)

    Groups: GRP_ADDR (u64 frame addresses), GRP_NR_IRQS (u32), GRP_CTRL (CTRL_INIT), and
    GRP_DIST_REGS / GRP_CPU_REGS (u32 registers; attr = `vgic_reg_attr(vcpu_id, offset)`), through
    which a VMM saves and restores the vGIC's state.
    """

    def __init__(self, vm: VmState, vgic: Vgic) -> None:
        self._vm = vm
        self._vgic = vgic

    def set_device_attr(self, group: int, attr: int, value: object = None) -> None:
        """KVM_SET_DEVICE_ATTR on the device fd (vgic_v2_set_attr); `value` is what attr.addr
        points to (an int, or its little-endian bytes): unused by GRP_CTRL."""
        if group in (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS):
            self._regs_access(group, attr, value)
        elif group == KVM_DEV_ARM_VGIC_GRP_ADDR:
            self._set_addr(attr, value)
        elif group == KVM_DEV_ARM_VGIC_GRP_NR_IRQS:
            self._set_nr_irqs(value)
        elif group == KVM_DEV_ARM_VGIC_GRP_CTRL and attr == KVM_DEV_ARM_VGIC_CTRL_INIT:
            self._vgic.init()
        else:
            raise KvmError(ENXIO, f"vGIC attribute group {group}, attr {attr:#x}: unknown")

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR on the device fd (vgic_v2_get_attr): the value attr.addr receives."""
        vgic = self._vgic
        if group in (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS):
            return self._regs_access(group, attr, None)
        if group == KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr == KVM_VGIC_V2_ADDR_TYPE_DIST:
                return vgic.dist_base
            if attr == KVM_VGIC_V2_ADDR_TYPE_CPU:
                return vgic.cpu_base
        elif group == KVM_DEV_ARM_VGIC_GRP_NR_IRQS:
            return vgic.nr_irqs
        raise KvmError(ENXIO, f"vGIC attribute group {group}, attr {attr:#x}: unknown")

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR on the device fd (vgic_v2_has_attr): returns if the attribute
        exists, raises ENXIO otherwise (EINVAL for a register of a vCPU that does not exist)."""
        known = {
            KVM_DEV_ARM_VGIC_GRP_ADDR: attr in (KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V2_ADDR_TYPE_CPU),
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS: True,
            KVM_DEV_ARM_VGIC_GRP_CTRL: attr == KVM_DEV_ARM_VGIC_CTRL_INIT,
        }
        if group in (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS):
            self._vcpu_index(attr)
            if has_register(self._vgic, _regions(group), attr & KVM_DEV_ARM_VGIC_OFFSET_MASK):
                return
        elif known.get(group, False):
            return
        raise KvmError(ENXIO, f"vGIC attribute group {group}, attr {attr:#x}: unknown")

    # --- the groups ----------------------------------------------------------------------------

    def _set_addr(self, attr: int, value: object) -> None:
        """kvm_vgic_addr (write) and vgic_check_iorange."""
        addr = read_user(value, 8, "vGIC frame address")
        if attr == KVM_VGIC_V2_ADDR_TYPE_DIST:
            current, size = self._vgic.dist_base, KVM_VGIC_V2_DIST_SIZE
        elif attr == KVM_VGIC_V2_ADDR_TYPE_CPU:
            current, size = self._vgic.cpu_base, KVM_VGIC_V2_CPU_SIZE
        else:
            raise KvmError(ENXIO, f"vGIC address type {attr}: not one of a GICv2")
        name = "distributor" if attr == KVM_VGIC_V2_ADDR_TYPE_DIST else "CPU interface"
        if current != VGIC_ADDR_UNDEF:
            raise KvmError(EEXIST, f"vGIC {name} address is already set to {current:#x}")
        if addr % FRAME_ALIGN:
            raise KvmError(EINVAL, f"vGIC {name} address {addr:#x} is not 4 KiB aligned")
        if addr + size >= 1 << 64:
            raise KvmError(EINVAL, f"vGIC {name} at {addr:#x} wraps around the address space")
        ipa_size = 1 << self._vm.memory.ipa_bits
        if addr + size > ipa_size:
            raise KvmError(E2BIG, f"vGIC {name} at {addr:#x} ends past the VM's "
                                  f"{self._vm.memory.ipa_bits}-bit IPA space")
        if attr == KVM_VGIC_V2_ADDR_TYPE_DIST:
            self._vgic.dist_base = addr
        else:
            self._vgic.cpu_base = addr

    def _set_nr_irqs(self, value: object) -> None:
        """GRP_NR_IRQS: at least 32 SPIs, at most 1023 interrupts, a multiple of 32, set once
        and before the vGIC is initialised."""
        nr_irqs = read_user(value, 4, "vGIC NR_IRQS")
        if nr_irqs < NR_PRIVATE_IRQS + 32 or nr_irqs > VGIC_MAX_RESERVED or nr_irqs % 32:
            raise KvmError(EINVAL, f"vGIC NR_IRQS {nr_irqs}: must be a multiple of 32 in 64..992")
        if self._vgic.ready or self._vgic.nr_spis:
            raise KvmError(EBUSY, f"vGIC NR_IRQS is already {self._vgic.nr_irqs}")
        self._vgic.nr_spis = nr_irqs - NR_PRIVATE_IRQS

    def _regs_access(self, group: int, attr: int, value: object) -> int:
        """vgic_v2_attr_regs_access: the register at attr's offset as vCPU attr's vcpu_index sees
        it; initialises the vGIC first. Writes when `value` is not None."""
        index = self._vcpu_index(attr)
        word = None if value is None else read_user(value, 4, "vGIC register")
        if any(v.running for v in self._vm.vcpus):
            raise KvmError(EBUSY, "vGIC registers: a vCPU is in KVM_RUN (lock_all_vcpus)")
        self._vgic.init()
        return user_access(self._vgic, _regions(group), index, attr & KVM_DEV_ARM_VGIC_OFFSET_MASK, word)

    def _vcpu_index(self, attr: int) -> int:
        """vgic_v2_parse_attr: the vCPU whose id is attr[39:32] (its index); EINVAL if none."""
        vcpu_id = (attr & KVM_DEV_ARM_VGIC_CPUID_MASK) >> KVM_DEV_ARM_VGIC_CPUID_SHIFT
        for traps in self._vm.vcpus:
            if traps.id == vcpu_id:
                return traps.index
        raise KvmError(EINVAL, f"vGIC register attr {attr:#x}: no vCPU with id {vcpu_id}")


def _regions(group: int) -> tuple[Region, ...]:
    return DIST_REGIONS if group == KVM_DEV_ARM_VGIC_GRP_DIST_REGS else CPU_USER_REGIONS
