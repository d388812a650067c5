"""Interrupt state: what KVM keeps per interrupt (struct vgic_irq), held one bit per interrupt ID.

A mask's bit n is interrupt n, so a distributor register of one bit per interrupt is a slice of a
mask, and "pending, enabled, not active and routed here" is four ANDs. A vCPU's SGIs and PPIs
(IDs 0-31) are a `PrivateIrqs` bank of its own; the SPIs (IDs 32 and up) one `SharedIrqs` bank.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pvtime.abi.gic import NR_PRIVATE_IRQS, NR_SGIS

PRIORITY_MASK = 0xF8  # VGIC_PRI_BITS = 5: KVM keeps priority bits [7:3] (vgic_mmio_write_priority)
SGI_MASK = (1 << NR_SGIS) - 1
PRIVATE_MASK = (1 << NR_PRIVATE_IRQS) - 1


@dataclass
class IrqBank:
    """Interrupts `first`..`end - 1`: their flags as masks (bit n is interrupt n), and priorities."""

    first: int
    end: int
    enabled: int = 0
    latch: int = 0  # pending_latch: set by an edge, GICD_ISPENDR or an SGI; cleared when acknowledged
    level: int = 0  # line_level: the input of a level-sensitive interrupt
    active: int = 0
    group: int = 0  # 1: Group 1
    edge: int = 0  # 1: edge-triggered (config), else level-sensitive
    priority: list[int] = field(default_factory=list)  # indexed by interrupt ID - first

    def pending(self) -> int:
        """irq_is_pending: an edge interrupt's latch; a level interrupt's latch or input line."""
        return self.latch | (self.level & ~self.edge)

    def all_bits(self) -> int:
        """Every interrupt of the bank."""
        return ((1 << self.end) - 1) & ~((1 << self.first) - 1)


@dataclass
class PrivateIrqs(IrqBank):
    """One vCPU's SGIs and PPIs (vgic_allocate_private_irqs: SGIs enabled and edge, PPIs level)."""

    sources: list[int] = field(default_factory=lambda: [0] * NR_SGIS)  # per SGI: requesting vCPUs
    active_source: list[int] = field(default_factory=lambda: [0] * NR_SGIS)

    @classmethod
    def create(cls) -> PrivateIrqs:
        """The reset state: SGIs enabled and edge-triggered, PPIs disabled and level, priority 0."""
        return cls(0, NR_PRIVATE_IRQS, enabled=SGI_MASK, edge=SGI_MASK, priority=[0] * NR_PRIVATE_IRQS)


@dataclass
class SharedIrqs(IrqBank):
    """The VM's SPIs (kvm_vgic_dist_init): disabled, level, priority 0, Group 0, no target set."""

    targets: list[int] = field(default_factory=list)  # GICD_ITARGETSR byte, indexed by ID - first
    target_vcpu: list[int] = field(default_factory=list)  # vCPU index the SPI is delivered to

    @classmethod
    def create(cls, nr_irqs: int) -> SharedIrqs:
        """SPIs 32..nr_irqs-1; each goes to vCPU 0 until GICD_ITARGETSR says otherwise, as in KVM."""
        count = max(nr_irqs - NR_PRIVATE_IRQS, 0)
        return cls(NR_PRIVATE_IRQS, max(nr_irqs, NR_PRIVATE_IRQS), priority=[0] * count,
                   targets=[0] * count, target_vcpu=[0] * count)


def field_of(mask: int, first: int, count: int) -> int:
    """Bits first..first+count-1 of `mask`, as an int of `count` bits."""
    return (mask >> first) & ((1 << count) - 1)


def with_field(mask: int, first: int, count: int, value: int) -> int:
    """`mask` with bits first..first+count-1 replaced by `value`."""
    ones = ((1 << count) - 1) << first
    return (mask & ~ones) | ((value << first) & ones)


def lowest_bit(mask: int) -> int:
    """The index of the lowest set bit of a non-zero mask."""
    return (mask & -mask).bit_length() - 1


def each_bit(mask: int) -> Iterator[int]:
    """The indices of the set bits of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
