"""KVM_IRQ_LINE on arm64 (arch/arm64/kvm/arm.c: kvm_vm_ioctl_irq_line): the VMM drives an
interrupt input. The irq field packs | vcpu2_index 31..28 | irq_type 27..24 | vcpu_index 23..16 |
irq_id 15..0 | (Documentation/virt/kvm/api.rst), the vCPU being 256 * vcpu2_index + vcpu_index:

- KVM_ARM_IRQ_TYPE_SPI: SPI irq_id (32 and up) of the in-kernel vGIC;
- KVM_ARM_IRQ_TYPE_PPI: PPI irq_id (16..31) of that vCPU (a timer's PPI ignores the VMM);
- KVM_ARM_IRQ_TYPE_CPU, only without a vGIC: the vCPU's IRQ input (irq_id 0), or its FIQ input
  (1), which pvtime vCPUs never take.

ENXIO when the type needs a vGIC the VM lacks (or the VM has one the type excludes), EINVAL for
an unknown type or a vCPU or interrupt that does not exist. `level` 0 is low, anything else high.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.errno import EINVAL, ENXIO
from pvtime.abi.gic import NR_PRIVATE_IRQS, NR_SGIS
from pvtime.abi.uapi import (
    KVM_ARM_IRQ_CPU_FIQ, KVM_ARM_IRQ_NUM_MASK, KVM_ARM_IRQ_NUM_SHIFT, KVM_ARM_IRQ_TYPE_CPU,
    KVM_ARM_IRQ_TYPE_MASK, KVM_ARM_IRQ_TYPE_PPI, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI,
    KVM_ARM_IRQ_VCPU2_MASK, KVM_ARM_IRQ_VCPU2_SHIFT, KVM_ARM_IRQ_VCPU_MASK, KVM_ARM_IRQ_VCPU_SHIFT,
)
from pvtime.kvm.errors import KvmError
from pvtime.kvm.uaccess import read_user

if TYPE_CHECKING:
    from pvtime.kvm.vm import VmState


def irq_line(vm: VmState, irq: object, level: int) -> None:
    """kvm_vm_ioctl_irq_line, its checks in Linux's order."""
    raw = read_user(irq, 4, "KVM_IRQ_LINE irq")
    irq_type = (raw >> KVM_ARM_IRQ_TYPE_SHIFT) & KVM_ARM_IRQ_TYPE_MASK
    index = (raw >> KVM_ARM_IRQ_VCPU_SHIFT) & KVM_ARM_IRQ_VCPU_MASK
    index += ((raw >> KVM_ARM_IRQ_VCPU2_SHIFT) & KVM_ARM_IRQ_VCPU2_MASK) * (KVM_ARM_IRQ_VCPU_MASK + 1)
    irq_id = (raw >> KVM_ARM_IRQ_NUM_SHIFT) & KVM_ARM_IRQ_NUM_MASK
    vgic, vcpus = vm.vgic, vm.vcpus
    if irq_type == KVM_ARM_IRQ_TYPE_CPU:
        if vgic is not None:
            raise KvmError(ENXIO, "KVM_IRQ_LINE: with a vGIC, a vCPU's input line is the vGIC's")
        if index >= len(vcpus) or irq_id > KVM_ARM_IRQ_CPU_FIQ:
            raise KvmError(EINVAL, f"KVM_IRQ_LINE: vCPU {index} line {irq_id} does not exist")
        vcpus[index].set_irq_line(irq_id, bool(level))
        return
    if irq_type not in (KVM_ARM_IRQ_TYPE_PPI, KVM_ARM_IRQ_TYPE_SPI):
        raise KvmError(EINVAL, f"KVM_IRQ_LINE: interrupt type {irq_type} is unknown")
    if vgic is None:
        raise KvmError(ENXIO, "KVM_IRQ_LINE: SPIs and PPIs need an in-kernel vGIC")
    if irq_type == KVM_ARM_IRQ_TYPE_SPI:
        if irq_id < NR_PRIVATE_IRQS:
            raise KvmError(EINVAL, f"KVM_IRQ_LINE: {irq_id} is not an SPI (32 and up)")
        vgic.inject(None, irq_id, bool(level))
        return
    if index >= len(vcpus):
        raise KvmError(EINVAL, f"KVM_IRQ_LINE: vCPU index {index}: the VM has {len(vcpus)} vCPUs")
    if not NR_SGIS <= irq_id < NR_PRIVATE_IRQS:
        raise KvmError(EINVAL, f"KVM_IRQ_LINE: {irq_id} is not a PPI (16..31)")
    vgic.inject(index, irq_id, bool(level))
