"""The vGIC's registers: what a guest load or store in its frames does (handled inside KVM_RUN,
never an exit), and the userspace view of KVM_DEV_ARM_VGIC_GRP_DIST_REGS / GRP_CPU_REGS.

The distributor follows vgic-mmio-v2.c's register table (vgic_v2_dist_registers) and the
handlers of vgic-mmio.c: each region has its access sizes, and an access of another size, a
misaligned one, one outside every region or to an interrupt past the last is read as zero and
its write ignored (check_region). Userspace accesses are 32-bit and use the regions' uaccess
variants: GICD_IGROUPR only after a write of GICD_IIDR, pending SGIs attributed to the accessed
vCPU, active state changed without a requester.

The guest's CPU interface is the GICv2 GICC (GICV) frame: CTLR, PMR, BPR, IAR, EOIR, RPR, HPPIR,
ABPR, AIAR, AEOIR, AHPPIR, APR0, IIDR and DIR, 32-bit accesses. Userspace sees the registers of
vgic_v2_cpu_registers: CTLR, PMR (as GICH_VMCR.VMPriMask: the priority >> 3), BPR, ABPR, APR0-3
(APR1-3 RAZ/WI), IIDR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pvtime.abi.errno import EINVAL
from pvtime.abi.gic import (
    GICC_ABPR, GICC_AEOIR, GICC_AHPPIR, GICC_AIAR, GICC_APR0, GICC_BPR, GICC_CTLR, GICC_DIR,
    GICC_EOIR, GICC_HPPIR, GICC_IAR, GICC_IIDR, GICC_PMR, GICC_RPR, GICD_CPENDSGIR, GICD_CTLR,
    GICD_CTLR_ENABLE, GICD_ICACTIVER, GICD_ICENABLER, GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR,
    GICD_IIDR, GICD_IPRIORITYR, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR,
    GICD_SGIR, GICD_SPENDSGIR, GICD_TYPER, GICD_TYPER_CPUS_SHIFT, ICFGR_EDGE, INTID_MASK,
    NR_PRIVATE_IRQS,
)
from pvtime.abi.widths import U32
from pvtime.kvm.errors import KvmError
from pvtime.kvm.vgic.cpuif import CTLR_BITS
from pvtime.kvm.vgic.dist import Vgic
from pvtime.kvm.vgic.irqs import PRIORITY_MASK, SGI_MASK, each_bit, field_of, with_field

PRODUCT_ID_KVM = 0x4B
IMPLEMENTER_ARM = 0x43B
GICC_ARCH_VERSION_V2 = 2
GICC_IIDR_VALUE = PRODUCT_ID_KVM << 20 | GICC_ARCH_VERSION_V2 << 16 | IMPLEMENTER_ARM

Read = Callable[[Vgic, int, int, int], int]  # (vgic, vCPU index, first ID or frame offset, size) -> value
Write = Callable[[Vgic, int, int, int, int], None]  # (..., value)


@dataclass(frozen=True)
class Region:
    """A register region (struct vgic_register_region)."""

    offset: int
    length: int
    bits_per_irq: int  # 0: a plain register, whose handlers get the offset in the frame
    sizes: tuple[int, ...]
    read: Read
    write: Write
    user_read: Read | None = None
    user_write: Write | None = None


# --- distributor handlers: (vgic, vCPU index, first interrupt ID, size[, value]) --------------

def _read_misc(g: Vgic, index: int, offset: int, size: int) -> int:
    """vgic_mmio_read_v2_misc: GICD_CTLR, GICD_TYPER, GICD_IIDR."""
    reg = offset & 0xC
    if reg == GICD_CTLR:
        return GICD_CTLR_ENABLE if g.enabled else 0
    if reg == GICD_TYPER:  # ITLinesNumber, CPUNumber
        return ((g.nr_irqs >> 5) - 1 | (len(g.vm.vcpus) - 1) << GICD_TYPER_CPUS_SHIFT) & U32
    if reg == GICD_IIDR:
        return PRODUCT_ID_KVM << 24 | g.implementation_rev << 12 | IMPLEMENTER_ARM
    return 0


def _write_misc(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    if offset & 0xC == GICD_CTLR:
        g.enabled = bool(value & GICD_CTLR_ENABLE)


def _user_write_misc(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    """vgic_mmio_uaccess_write_v2_misc: GICD_IIDR must be written back as read, and allows
    userspace to restore the interrupt groups from then on."""
    if offset & 0xC == GICD_IIDR:
        if value != _read_misc(g, index, offset, size):
            raise KvmError(EINVAL, f"GICD_IIDR {value:#x}: this vGIC is {_read_misc(g, index, offset, size):#x}")
        g.groups_user_writable = True
        return
    _write_misc(g, index, offset, size, value)


def _flag_reader(name: str) -> Read:
    def read(g: Vgic, index: int, first: int, size: int) -> int:
        return field_of(getattr(g.bank(index, first), name), first, 8 * size)
    return read


def _write_group(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    bank = g.bank(index, first)
    bank.group = with_field(bank.group, first, 8 * size, value)


def _user_write_group(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    if g.groups_user_writable:
        _write_group(g, index, first, size, value)


def _write_senable(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    g.bank(index, first).enabled |= value << first


def _write_cenable(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    g.bank(index, first).enabled &= ~(value << first)


def _read_pending(g: Vgic, index: int, first: int, size: int) -> int:
    if first < NR_PRIVATE_IRQS:
        g.sync_timers(index)
    return field_of(g.bank(index, first).pending(), first, 8 * size)


def _write_spending(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_mmio_write_spending: the SGI bits of GICD_ISPENDR0 are WI."""
    if first == 0:
        value &= ~SGI_MASK
    g.bank(index, first).latch |= value << first


def _user_write_spending(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_uaccess_write_spending: a restored SGI is pending from the accessed vCPU itself."""
    g.bank(index, first).latch |= value << first
    if first == 0:
        for sgi in each_bit(value & SGI_MASK):
            g.cpus[index].irqs.sources[sgi] |= 1 << index


def _write_cpending(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_mmio_write_cpending: the SGI bits of GICD_ICPENDR0 are WI."""
    if first == 0:
        value &= ~SGI_MASK
    g.bank(index, first).latch &= ~(value << first)


def _user_write_cpending(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_uaccess_write_cpending: clearing an SGI forgets all its sources."""
    g.bank(index, first).latch &= ~(value << first)
    if first == 0:
        for sgi in each_bit(value & SGI_MASK):
            g.cpus[index].irqs.sources[sgi] = 0


def _active_writer(active: bool, requester: bool) -> Write:
    """vgic_mmio_change_active: an SGI made active remembers the requesting vCPU as its source
    (vCPU 0 for userspace, which has none)."""
    def write(g: Vgic, index: int, first: int, size: int, value: int) -> None:
        bank = g.bank(index, first)
        if not active:
            bank.active &= ~(value << first)
            return
        bank.active |= value << first
        if first == 0:
            for sgi in each_bit(value & SGI_MASK):
                g.cpus[index].irqs.active_source[sgi] = index if requester else 0
    return write


def _read_priority(g: Vgic, index: int, first: int, size: int) -> int:
    bank = g.bank(index, first)
    return sum(bank.priority[first - bank.first + i] << (8 * i) for i in range(size))


def _write_priority(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    bank = g.bank(index, first)
    for i in range(size):
        bank.priority[first - bank.first + i] = (value >> (8 * i)) & PRIORITY_MASK


def _read_target(g: Vgic, index: int, first: int, size: int) -> int:
    """GICD_ITARGETSR: a private interrupt targets its own vCPU (vgic_init: 1 << index)."""
    if first < NR_PRIVATE_IRQS:
        return sum((1 << index) << (8 * i) for i in range(size))
    return sum(g.spis.targets[first - NR_PRIVATE_IRQS + i] << (8 * i) for i in range(size))


def _write_target(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_mmio_write_target: GICD_ITARGETSR0-7 are read-only; the targets keep the vCPUs that exist."""
    if first < NR_PRIVATE_IRQS:
        return
    cpu_mask = (1 << len(g.vm.vcpus)) - 1
    for i in range(size):
        g.route(first + i, (value >> (8 * i)) & 0xFF & cpu_mask)


def _read_config(g: Vgic, index: int, first: int, size: int) -> int:
    edge = g.bank(index, first).edge
    return sum(ICFGR_EDGE << (2 * i) for i in range(4 * size) if edge >> (first + i) & 1)


def _write_config(g: Vgic, index: int, first: int, size: int, value: int) -> None:
    """vgic_mmio_write_config: SGIs and PPIs keep their configuration (the timers need level PPIs)."""
    if first < NR_PRIVATE_IRQS:
        return
    for i in range(4 * size):
        bit = 1 << (first + i)
        if value >> (2 * i + 1) & 1:
            g.spis.edge |= bit
        else:
            g.spis.edge &= ~bit


def _read_raz(g: Vgic, index: int, offset: int, size: int) -> int:
    return 0


def _write_sgir(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    g.send_sgi(index, value)


def _read_sgipend(g: Vgic, index: int, offset: int, size: int) -> int:
    """GICD_CPENDSGIR/SPENDSGIR: a byte per SGI, a bit per requesting vCPU."""
    sources = g.cpus[index].irqs.sources
    return sum(sources[(offset & 0xF) + i] << (8 * i) for i in range(size))


def _sgipend_writer(pending: bool) -> Write:
    def write(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
        irqs = g.cpus[index].irqs
        for i in range(size):
            sgi, cpus = (offset & 0xF) + i, (value >> (8 * i)) & 0xFF
            irqs.sources[sgi] = irqs.sources[sgi] | cpus if pending else irqs.sources[sgi] & ~cpus
            if irqs.sources[sgi]:
                irqs.latch |= 1 << sgi
            else:
                irqs.latch &= ~(1 << sgi)
    return write


_W32, _W8_32 = (4,), (1, 4)
DIST_REGIONS: tuple[Region, ...] = (
    Region(GICD_CTLR, 12, 0, _W32, _read_misc, _write_misc, None, _user_write_misc),
    Region(GICD_IGROUPR, 0x80, 1, _W32, _flag_reader("group"), _write_group, None, _user_write_group),
    Region(GICD_ISENABLER, 0x80, 1, _W32, _flag_reader("enabled"), _write_senable),
    Region(GICD_ICENABLER, 0x80, 1, _W32, _flag_reader("enabled"), _write_cenable),
    Region(GICD_ISPENDR, 0x80, 1, _W32, _read_pending, _write_spending, None, _user_write_spending),
    Region(GICD_ICPENDR, 0x80, 1, _W32, _read_pending, _write_cpending, None, _user_write_cpending),
    Region(GICD_ISACTIVER, 0x80, 1, _W32, _flag_reader("active"), _active_writer(True, True), None,
           _active_writer(True, False)),
    Region(GICD_ICACTIVER, 0x80, 1, _W32, _flag_reader("active"), _active_writer(False, True), None,
           _active_writer(False, False)),
    Region(GICD_IPRIORITYR, 0x400, 8, _W8_32, _read_priority, _write_priority),
    Region(GICD_ITARGETSR, 0x400, 8, _W8_32, _read_target, _write_target),
    Region(GICD_ICFGR, 0x100, 2, _W32, _read_config, _write_config),
    Region(GICD_SGIR, 4, 0, _W32, _read_raz, _write_sgir),
    Region(GICD_CPENDSGIR, 16, 0, _W8_32, _read_sgipend, _sgipend_writer(False)),
    Region(GICD_SPENDSGIR, 16, 0, _W8_32, _read_sgipend, _sgipend_writer(True)),
)


# --- the CPU interface -----------------------------------------------------------------------

def _cpu_read(g: Vgic, index: int, offset: int, size: int) -> int:
    """A guest load from the GICC frame."""
    cif = g.cpus[index].cpuif
    if offset in (GICC_IAR, GICC_AIAR):
        return g.acknowledge(index, alias=offset == GICC_AIAR)
    if offset in (GICC_HPPIR, GICC_AHPPIR):
        return g.pending_id(index, alias=offset == GICC_AHPPIR)
    if offset == GICC_BPR:
        return cif.effective_bpr()
    if offset == GICC_ABPR:
        return cif.effective_abpr()
    if offset == GICC_RPR:
        return cif.running_priority()
    return _user_cpu_read(g, index, offset, size) if offset != GICC_PMR else cif.pmr


def _cpu_write(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    """A guest store to the GICC frame."""
    if offset in (GICC_EOIR, GICC_AEOIR):
        g.end_of_interrupt(index, value)
    elif offset == GICC_DIR:
        g.deactivate(index, value & INTID_MASK)
    elif offset == GICC_PMR:
        g.cpus[index].cpuif.pmr = value & PRIORITY_MASK
    elif offset in (GICC_CTLR, GICC_BPR, GICC_ABPR, GICC_APR0):
        _user_cpu_write(g, index, offset, size, value)


_GUEST_CPU_REGS = frozenset({GICC_CTLR, GICC_PMR, GICC_BPR, GICC_IAR, GICC_EOIR, GICC_RPR, GICC_HPPIR,
                             GICC_ABPR, GICC_AIAR, GICC_AEOIR, GICC_AHPPIR, GICC_APR0, GICC_IIDR, GICC_DIR})


def _user_cpu_read(g: Vgic, index: int, offset: int, size: int) -> int:
    """vgic_mmio_read_vcpuif / vgic_mmio_read_apr: the VMCR fields as KVM exports them."""
    cif = g.cpus[index].cpuif
    if offset == GICC_CTLR:
        return cif.ctlr
    if offset == GICC_PMR:
        return cif.pmr >> 3  # GICH_VMCR.VMPriMask
    if offset == GICC_BPR:
        return cif.bpr
    if offset == GICC_ABPR:
        return cif.abpr
    if offset == GICC_APR0:
        return cif.apr
    if offset == GICC_IIDR:
        return GICC_IIDR_VALUE
    return 0  # APR1-3: a GICv2 has 32 preemption levels at most


def _user_cpu_write(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    """vgic_mmio_write_vcpuif / vgic_mmio_write_apr."""
    cif = g.cpus[index].cpuif
    if offset == GICC_CTLR:
        cif.ctlr = value & CTLR_BITS
    elif offset == GICC_PMR:
        cif.pmr = (value << 3) & PRIORITY_MASK
    elif offset == GICC_BPR:
        cif.bpr = value & 7
    elif offset == GICC_ABPR:
        cif.abpr = value & 7
    elif offset == GICC_APR0:
        cif.apr = value & U32


CPU_USER_REGIONS: tuple[Region, ...] = tuple(
    Region(offset, length, 0, _W32, _user_cpu_read, _user_cpu_write)
    for offset, length in ((GICC_CTLR, 4), (GICC_PMR, 4), (GICC_BPR, 4), (GICC_ABPR, 4),
                           (GICC_APR0, 16), (GICC_IIDR, 4)))


# --- dispatch --------------------------------------------------------------------------------

def find_region(g: Vgic, regions: tuple[Region, ...], offset: int, size: int) -> Region | None:
    """vgic_get_mmio_region: the region an access falls in, if the access is one it takes."""
    for region in regions:
        if region.offset <= offset < region.offset + region.length:
            break
    else:
        return None
    if size not in region.sizes or offset % size:
        return None
    if region.bits_per_irq and _first_irq(region, offset) >= g.nr_irqs:
        return None  # an interrupt that does not exist
    return region


def _first_irq(region: Region, offset: int) -> int:
    """VGIC_ADDR_TO_INTID: the first interrupt an access at `offset` covers."""
    return (offset - region.offset) * 8 // region.bits_per_irq


def _operand(region: Region, offset: int) -> int:
    """What a region's handlers take: the first interrupt ID, or the register's offset."""
    return _first_irq(region, offset) if region.bits_per_irq else offset


def dist_read(g: Vgic, index: int, offset: int, size: int) -> int:
    """A guest load from the distributor (dispatch_mmio_read): RAZ where no register takes it."""
    region = find_region(g, DIST_REGIONS, offset, size)
    return 0 if region is None else region.read(g, index, _operand(region, offset), size)


def dist_write(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    """A guest store to the distributor (dispatch_mmio_write): WI where no register takes it."""
    region = find_region(g, DIST_REGIONS, offset, size)
    if region is not None:
        region.write(g, index, _operand(region, offset), size, value)
        g.kick()


def cpu_read(g: Vgic, index: int, offset: int, size: int) -> int:
    """A guest load from the CPU interface: 32-bit accesses to its registers, else RAZ."""
    if size != 4 or offset not in _GUEST_CPU_REGS:
        return 0
    return _cpu_read(g, index, offset, size)


def cpu_write(g: Vgic, index: int, offset: int, size: int, value: int) -> None:
    """A guest store to the CPU interface: 32-bit accesses to its registers, else WI."""
    if size == 4 and offset in _GUEST_CPU_REGS:
        _cpu_write(g, index, offset, size, value)
        g.kick()


def user_access(g: Vgic, regions: tuple[Region, ...], index: int, offset: int, value: int | None) -> int:
    """vgic_uaccess: a 32-bit read (value None) or write by userspace, as vCPU `index` sees the
    registers; an offset no register takes reads 0 and ignores the write."""
    region = find_region(g, regions, offset, 4)
    if region is None:
        return 0
    operand = _operand(region, offset)
    if value is None:
        return (region.user_read or region.read)(g, index, operand, 4)
    (region.user_write or region.write)(g, index, operand, 4, value)
    g.kick()
    return 0


def has_register(g: Vgic, regions: tuple[Region, ...], offset: int) -> bool:
    """vgic_v2_has_attr_regs: an aligned 32-bit register exists at `offset`."""
    return offset % 4 == 0 and find_region(g, regions, offset, 4) is not None

