"""Saving and restoring a vGICv2's state through its device attributes, as a VMM does for migration.

KVM exposes the distributor and each vCPU's CPU interface as register groups
(KVM_DEV_ARM_VGIC_GRP_DIST_REGS / _CPU_REGS, Documentation/virt/kvm/devices/arm-vgic.rst): the
attribute names the vCPU and the register offset. The banked words (SGIs and PPIs, INTIDs 0-31)
are read per vCPU, the shared ones (SPIs) once. Restoring follows the order QEMU's
hw/intc/arm_gic_kvm.c uses and KVM's uaccess rules need (arch/arm64/kvm/vgic/vgic-mmio-v2.c):

1. GICD_IIDR first: until userspace writes it back, KVM ignores written interrupt groups;
2. configuration (CTLR, ICFGR, ITARGETSR, IPRIORITYR, IGROUPR);
3. enable, pending and active state, each cleared through its IC* twin before being set; the SGIs'
   pending bits go through GICD_SPENDSGIR, which keeps their source CPUs (ISPENDR would record
   the vCPU itself as the source);
4. the CPU interfaces.
"""

from __future__ import annotations

from pvtime.abi.gic import (
    GICC_ABPR, GICC_APR0, GICC_BPR, GICC_CTLR, GICC_PMR, GICD_CTLR, GICD_ICFGR, GICD_IGROUPR, GICD_IIDR,
    GICD_IPRIORITYR, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR, GICD_SPENDSGIR,
)
from pvtime.abi.uapi import (
    KVM_DEV_ARM_VGIC_GRP_CPU_REGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, vgic_reg_attr,
)
from pvtime.kvm import VgicV2Device

DIST, CPU = KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS
CPU_WORDS = (GICC_CTLR, GICC_PMR, GICC_BPR, GICC_ABPR, GICC_APR0)
_SET_CLEAR_TWIN = 0x80  # ISENABLER -> ICENABLER, ISPENDR -> ICPENDR, ISACTIVER -> ICACTIVER
_SGI_PENDING = 0xFFFF  # ISPENDR0's SGI bits
_RESTORE_ORDER = ((GICD_CTLR, 4), (GICD_ICFGR, 0x100), (GICD_ITARGETSR, 0x400), (GICD_IPRIORITYR, 0x400),
                  (GICD_IGROUPR, 0x80), (GICD_ISENABLER, 0x80), (GICD_ISPENDR, 0x80), (GICD_SPENDSGIR, 0x10),
                  (GICD_ISACTIVER, 0x80))

Key = tuple[int, int, int]  # (group, vCPU index, register offset)


def _words(base: int, bits_per_irq: int, first: int, end: int) -> list[int]:
    return [base + (i * bits_per_irq) // 8 for i in range(first, end, 32 // bits_per_irq)]


def banked_words() -> list[int]:
    """The distributor words each vCPU has its own copy of (INTIDs 0-31)."""
    return (_words(GICD_IGROUPR, 1, 0, 32) + _words(GICD_ISENABLER, 1, 0, 32) + _words(GICD_ISPENDR, 1, 0, 32)
            + _words(GICD_ISACTIVER, 1, 0, 32) + _words(GICD_IPRIORITYR, 8, 0, 32) + _words(GICD_ICFGR, 2, 0, 32)
            + [GICD_SPENDSGIR + 4 * i for i in range(4)])


def shared_words(nr_irqs: int) -> list[int]:
    """The distributor words of the SPIs (INTIDs 32 to nr_irqs - 1)."""
    return (_words(GICD_IGROUPR, 1, 32, nr_irqs) + _words(GICD_ISENABLER, 1, 32, nr_irqs)
            + _words(GICD_ISPENDR, 1, 32, nr_irqs) + _words(GICD_ISACTIVER, 1, 32, nr_irqs)
            + _words(GICD_IPRIORITYR, 8, 32, nr_irqs) + _words(GICD_ITARGETSR, 8, 32, nr_irqs)
            + _words(GICD_ICFGR, 2, 32, nr_irqs))


def save(gic: VgicV2Device, vcpu_indexes: list[int]) -> dict[Key, int]:
    """Every register of the vGIC's state."""
    nr_irqs = gic.get_device_attr(KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0)
    state = {(DIST, 0, off): gic.get_device_attr(DIST, vgic_reg_attr(0, off))
             for off in [GICD_CTLR, GICD_IIDR, *shared_words(nr_irqs)]}
    for v in vcpu_indexes:
        state |= {(DIST, v, off): gic.get_device_attr(DIST, vgic_reg_attr(v, off)) for off in banked_words()}
        state |= {(CPU, v, off): gic.get_device_attr(CPU, vgic_reg_attr(v, off)) for off in CPU_WORDS}
    return state


def restore(gic: VgicV2Device, state: dict[Key, int]) -> None:
    """Write `state` back in the order the module docstring gives."""
    def put(group: int, v: int, off: int, value: int) -> None:
        gic.set_device_attr(group, vgic_reg_attr(v, off), value)

    iidr = state.get((DIST, 0, GICD_IIDR))
    if iidr is not None:
        put(DIST, 0, GICD_IIDR, iidr)
    dist = sorted((off, v, value) for (group, v, off), value in state.items() if group == DIST and off != GICD_IIDR)
    for base, span in _RESTORE_ORDER:
        for off, v, value in dist:
            if not base <= off < base + span:
                continue
            if base in (GICD_ISENABLER, GICD_ISPENDR, GICD_ISACTIVER):
                put(DIST, v, off + _SET_CLEAR_TWIN, 0xFFFF_FFFF)
            if off == GICD_ISPENDR:
                value &= ~_SGI_PENDING  # restored with their sources through GICD_SPENDSGIR
            put(DIST, v, off, value)
    for (group, v, off), value in state.items():
        if group == CPU:
            put(CPU, v, off, value)


def to_json(state: dict[Key, int]) -> list[list[int]]:
    """The state as JSON-friendly rows [group, vCPU, offset, value], sorted."""
    return sorted([g, v, off, value] for (g, v, off), value in state.items())


def from_json(rows: list[list[int]]) -> dict[Key, int]:
    """The inverse of `to_json`."""
    return {(int(g), int(v), int(off)): int(value) for g, v, off, value in rows}
