"""The in-kernel interrupt controller: a GICv2 as KVM/arm64 emulates it (arch/arm64/kvm/vgic/).

- `device`: the KVM_DEV_TYPE_ARM_VGIC_V2 device fd, its creation and attribute groups
  (vgic-kvm-device.c, kvm_vgic_create);
- `dist`: one VM's vGIC: interrupt state, delivery to the vCPUs, SGIs, injection, its
  initialisation and mapping at the first KVM_RUN (vgic.c, vgic-init.c, vgic-v2.c);
- `mmio`: its registers, for the guest (handled inside KVM_RUN, as kvm_io_bus does) and for
  userspace save/restore (vgic-mmio.c, vgic-mmio-v2.c);
- `cpuif`: a vCPU's CPU interface state (priority mask, binary points, active priorities);
- `irqs`: interrupt state, one bit per interrupt.

GICv3 is not modelled yet: KVM_DEV_TYPE_ARM_VGIC_V3 is ENODEV, and a VM with a vGIC has at most
8 vCPUs.
"""

from pvtime.kvm.vgic.device import VgicV2Device
from pvtime.kvm.vgic.dist import Vgic

__all__ = ["Vgic", "VgicV2Device"]
