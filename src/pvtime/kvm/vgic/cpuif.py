"""A vCPU's GIC CPU interface: the state KVM keeps in the vCPU's VMCR and APR (struct vgic_v2_cpu_if).

The guest sees a GICv2 CPU interface without the Security Extensions, as the GICV frame of a GICv2
with five priority bits presents it: 32 priority levels, so GICC_BPR is at least 2 and GICC_ABPR
at least 3, and the active priorities are one bit per preemption level in GICC_APR0, the format
KVM_DEV_ARM_VGIC_GRP_CPU_REGS saves and restores (Documentation/virt/kvm/devices/arm-vgic.rst).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvtime.abi.gic import (
    GICC_CTLR_ACKCTL, GICC_CTLR_CBPR, GICC_CTLR_ENABLE_GRP0, GICC_CTLR_ENABLE_GRP1, GICC_CTLR_EOIMODE,
    GICC_CTLR_FIQEN, IDLE_PRIORITY,
)
from pvtime.kvm.vgic.irqs import lowest_bit

CTLR_BITS = (GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_ENABLE_GRP1 | GICC_CTLR_ACKCTL | GICC_CTLR_FIQEN
             | GICC_CTLR_CBPR | GICC_CTLR_EOIMODE)
BPR_MIN = 2  # 5 priority bits: the group priority field is at most bits [7:3]
ABPR_MIN = BPR_MIN + 1
PREEMPTION_SHIFT = 3  # APR bit n: preemption level n, a group priority of n << 3


@dataclass
class CpuInterface:
    """GICC_CTLR, GICC_PMR, the binary points as written, and the active priorities (all 0 at
    vgic_v2_enable: "by forcing VMCR to zero, the GIC will restore the binary points to their
    reset values")."""

    ctlr: int = 0
    pmr: int = 0
    bpr: int = 0
    abpr: int = 0
    apr: int = 0

    def effective_bpr(self) -> int:
        """GICC_BPR as the guest reads and uses it."""
        return max(self.bpr & 7, BPR_MIN)

    def effective_abpr(self) -> int:
        """GICC_ABPR as the guest reads and uses it."""
        return max(self.abpr & 7, ABPR_MIN)

    def group_enabled(self, group: int) -> bool:
        """Does the interface forward interrupts of this group (GICC_CTLR.EnableGrp0/1)?"""
        return bool(self.ctlr & (GICC_CTLR_ENABLE_GRP1 if group else GICC_CTLR_ENABLE_GRP0))

    def is_fiq(self, group: int) -> bool:
        """Group 0 with GICC_CTLR.FIQEn is signalled as FIQ, which pvtime vCPUs do not take."""
        return group == 0 and bool(self.ctlr & GICC_CTLR_FIQEN)

    def group_priority(self, priority: int, group: int) -> int:
        """The priority's preemption part: BPR n keeps bits [7:n+1]; Group 1 with CBPR 0 uses
        ABPR, which keeps bits [7:n]."""
        if group == 0 or self.ctlr & GICC_CTLR_CBPR:
            return priority & (0xFF << (self.effective_bpr() + 1)) & 0xFF
        return priority & (0xFF << self.effective_abpr()) & 0xFF

    def running_priority(self) -> int:
        """GICC_RPR: the group priority of the highest-priority active interrupt, 0xFF when idle."""
        return lowest_bit(self.apr) << PREEMPTION_SHIFT if self.apr else IDLE_PRIORITY

    def preempts(self, priority: int, group: int) -> bool:
        """Is an interrupt of this priority above the priority mask and the running priority?"""
        return priority < self.pmr and self.group_priority(priority, group) < self.running_priority()

    def activate(self, priority: int, group: int) -> None:
        """Acknowledging an interrupt raises the running priority to its group priority."""
        self.apr |= 1 << (self.group_priority(priority, group) >> PREEMPTION_SHIFT)

    def drop_priority(self) -> None:
        """End of interrupt: the highest active priority is dropped."""
        self.apr &= self.apr - 1

    @property
    def split_eoi(self) -> bool:
        """GICC_CTLR.EOImode: EOIR only drops the priority; GICC_DIR deactivates."""
        return bool(self.ctlr & GICC_CTLR_EOIMODE)
