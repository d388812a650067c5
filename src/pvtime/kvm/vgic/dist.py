"""One VM's vGICv2 (struct vgic_dist): interrupt state, delivery to the vCPUs, and its lifecycle.

Delivery (arch/arm64/kvm/vgic/vgic.c): an interrupt is a candidate for a vCPU when the distributor
is enabled (GICD_CTLR) and it is pending, enabled, not active and routed to that vCPU (an SGI or
PPI to its own vCPU, an SPI to its target: the lowest CPU of GICD_ITARGETSR, vCPU 0 when none,
as vgic_mmio_write_target sets irq->target_vcpu). The CPU interface signals the highest-priority
candidate of an enabled group (lowest ID among equals) when it is above GICC_PMR and preempts the
running priority. The timers drive their PPIs' input lines (level-sensitive), sampled from the
timer registers whenever the line is looked at, so they are exact at every instant.

A vCPU halted in WFI (or PSCI CPU_SUSPEND) wakes when its IRQ is signalled, as on hardware. (KVM's
kvm_vgic_vcpu_pending_irq also wakes it for an interrupt that GICC_CTLR or the running priority
holds back; the guest then finds nothing to take and waits again.)

vCPUs are named by their index (creation order) in target lists and SGI sources, as KVM's vCPU
ids are when a VMM creates vCPUs 0..n-1 in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvtime.abi.errno import EINVAL, ENXIO
from pvtime.abi.gic import (
    CPUID_SHIFT, GICC_CTLR_ACKCTL, GICC_CTLR_ENABLE_GRP0, GICC_CTLR_ENABLE_GRP1, INTID_MASK, NR_PRIVATE_IRQS, NR_SGIS, SGIR_FILTER_LIST,
    SGIR_FILTER_OTHERS, SGIR_FILTER_SELF, SPURIOUS, SPURIOUS_GROUP1,
)
from pvtime.abi.uapi import KVM_VGIC_V2_CPU_SIZE, KVM_VGIC_V2_DIST_SIZE, VGIC_ADDR_UNDEF
from pvtime.kvm.errors import KvmError
from pvtime.kvm.vgic.cpuif import CpuInterface
from pvtime.kvm.vgic.irqs import IrqBank, PrivateIrqs, SharedIrqs, each_bit, lowest_bit

if TYPE_CHECKING:
    from pvtime.kvm.vm import VmState

VGIC_NR_IRQS_LEGACY = 256  # interrupts when GRP_NR_IRQS was not set (vgic_init)
KVM_VGIC_IMP_REV_LATEST = 3  # GICD_IIDR.Revision KVM reports unless userspace set another


@dataclass
class VgicCpu:
    """One vCPU's part of the vGIC (struct vgic_cpu): its SGIs and PPIs, its CPU interface, and
    the PPIs its virtual and physical timers drive once the vCPU has run (kvm_timer_enable)."""

    irqs: PrivateIrqs
    cpuif: CpuInterface
    timer_ppis: tuple[int, int] | None = None


class Vgic:
    """The vGIC of a VM, from KVM_CREATE_DEVICE (kvm_vgic_create) on."""

    def __init__(self, vm: VmState) -> None:
        self.vm = vm
        self._create()

    def _create(self) -> None:
        """The state of a device just created (kvm_vgic_create), and after kvm_vgic_destroy."""
        self.dist_base = VGIC_ADDR_UNDEF
        self.cpu_base = VGIC_ADDR_UNDEF
        self.nr_spis = 0  # 0 until GRP_NR_IRQS or vgic_init sets it
        self.initialized = False  # vgic_init done: the interrupts exist
        self.ready = False  # kvm_vgic_map_resources done: the guest can reach the registers
        self.enabled = False  # GICD_CTLR.EnableGrp
        self.implementation_rev = 0
        self.groups_user_writable = False  # set by a userspace write of GICD_IIDR
        self.spis = SharedIrqs.create(0)
        self.cpus: list[VgicCpu] = []
        self.routed: list[int] = []  # per vCPU index: the SPIs whose target it is

    @property
    def nr_irqs(self) -> int:
        """SGIs, PPIs and SPIs."""
        return self.nr_spis + NR_PRIVATE_IRQS

    # --- lifecycle (vgic-init.c, vgic-v2.c) ----------------------------------------------------

    def init(self) -> None:
        """vgic_init: freeze the number of SPIs (224 unless set) and create every interrupt."""
        if self.initialized:
            return
        if not self.nr_spis:
            self.nr_spis = VGIC_NR_IRQS_LEGACY - NR_PRIVATE_IRQS
        self.spis = SharedIrqs.create(self.nr_irqs)
        self.cpus = [VgicCpu(PrivateIrqs.create(), CpuInterface()) for _ in self.vm.vcpus]
        self.routed = [0] * len(self.cpus)
        if self.routed:
            self.routed[0] = self.spis.all_bits()
        if not self.implementation_rev:
            self.implementation_rev = KVM_VGIC_IMP_REV_LATEST
        self.initialized = True

    def map_resources(self) -> None:
        """kvm_vgic_map_resources at a vCPU's first KVM_RUN: both frames placed and apart, the
        vGIC initialised. A failure destroys the vGIC's state (kvm_vgic_destroy) and fails the run."""
        if self.ready:
            return
        try:
            if self.dist_base == VGIC_ADDR_UNDEF or self.cpu_base == VGIC_ADDR_UNDEF:
                raise KvmError(ENXIO, "vGIC: set the distributor and CPU interface addresses "
                                      "(KVM_DEV_ARM_VGIC_GRP_ADDR) before the first KVM_RUN")
            if not (self.dist_base + KVM_VGIC_V2_DIST_SIZE <= self.cpu_base
                    or self.cpu_base + KVM_VGIC_V2_CPU_SIZE <= self.dist_base):
                raise KvmError(EINVAL, f"vGIC: the distributor at {self.dist_base:#x} and the CPU "
                                       f"interface at {self.cpu_base:#x} overlap")
        except KvmError:
            self._create()  # kvm_vgic_destroy: the vGIC stays in-kernel, its setup is forgotten
            raise
        self.init()
        self.ready = True

    def lazy_init(self) -> None:
        """vgic_lazy_init: a GICv2 initialises itself at its first use."""
        self.init()

    def claim_timer_ppis(self, index: int, vtimer: int, ptimer: int) -> None:
        """kvm_vgic_set_owner: the timers of vCPU `index` own (and drive) these PPIs from now on."""
        self.cpus[index].timer_ppis = (vtimer, ptimer)

    def reset_timer_irqs(self, index: int) -> None:
        """kvm_vgic_reset_mapped_irq at a vCPU reset: the timer PPIs neither pending nor active."""
        cpu = self.cpus[index] if self.initialized and index < len(self.cpus) else None
        if cpu is None or cpu.timer_ppis is None:
            return
        bits = sum(1 << ppi for ppi in set(cpu.timer_ppis))
        cpu.irqs.active &= ~bits
        cpu.irqs.latch &= ~bits
        cpu.irqs.level &= ~bits

    # --- where a guest access goes (kvm_io_bus) ------------------------------------------------

    def frame_of(self, gpa: int, size: int) -> tuple[bool, int] | None:
        """(is the CPU interface, offset) when [gpa, gpa+size) lies in one of the vGIC's frames
        once it is mapped; None otherwise (the access exits to the VMM)."""
        if not self.ready:
            return None
        if self.dist_base <= gpa and gpa + size <= self.dist_base + KVM_VGIC_V2_DIST_SIZE:
            return False, gpa - self.dist_base
        if self.cpu_base <= gpa and gpa + size <= self.cpu_base + KVM_VGIC_V2_CPU_SIZE:
            return True, gpa - self.cpu_base
        return None

    # --- interrupt state ---------------------------------------------------------------------

    def bank(self, index: int, intid: int) -> IrqBank:
        """The bank holding `intid` as vCPU `index` sees it (its own SGIs and PPIs)."""
        return self.cpus[index].irqs if intid < NR_PRIVATE_IRQS else self.spis

    def sync_timers(self, index: int) -> None:
        """kvm_timer_update_irq: the timer PPIs' input lines follow the timers' outputs now."""
        cpu = self.cpus[index]
        if cpu.timer_ppis is None:
            return
        timer = self.vm.vcpus[index].timer
        count = self.vm.host.counter()
        vppi, pppi = cpu.timer_ppis
        level = cpu.irqs.level & ~((1 << vppi) | (1 << pppi))
        if timer.vtimer.asserted(timer.cntvct(count)):
            level |= 1 << vppi
        if timer.ptimer.asserted(timer.cntpct(count)):
            level |= 1 << pppi
        cpu.irqs.level = level

    def route(self, intid: int, targets: int) -> None:
        """GICD_ITARGETSR of an SPI: its target list, and the one vCPU KVM delivers it to."""
        slot = intid - NR_PRIVATE_IRQS
        self.spis.targets[slot] = targets
        old, new = self.spis.target_vcpu[slot], lowest_bit(targets) if targets else 0
        self.spis.target_vcpu[slot] = new
        if self.routed:
            self.routed[old] &= ~(1 << intid)
            self.routed[new] |= 1 << intid

    def _highest(self, index: int) -> tuple[int, int, int] | None:
        """(priority, ID, group) of vCPU `index`'s highest-priority candidate of an enabled group."""
        if not self.enabled:
            return None
        cpu = self.cpus[index]
        ctlr = cpu.cpuif.ctlr
        if not ctlr & (GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_ENABLE_GRP1):
            return None
        self.sync_timers(index)
        best = None
        for bank in (cpu.irqs, self.spis):
            candidates = bank.pending() & bank.enabled & ~bank.active
            if bank is self.spis:
                candidates &= self.routed[index]
            if not ctlr & GICC_CTLR_ENABLE_GRP1:
                candidates &= ~bank.group
            elif not ctlr & GICC_CTLR_ENABLE_GRP0:
                candidates &= bank.group
            for intid in each_bit(candidates):
                prio = bank.priority[intid - bank.first]
                if best is None or prio < best[0]:
                    best = (prio, intid, (bank.group >> intid) & 1)
        return best

    def irq_signaled(self, index: int) -> bool:
        """Is vCPU `index`'s IRQ input asserted (the CPU takes it when PSTATE.I is clear)?"""
        if not (self.initialized and self.enabled):
            return False
        best = self._highest(index)
        if best is None:
            return False
        prio, _, group = best
        cif = self.cpus[index].cpuif
        return not cif.is_fiq(group) and cif.preempts(prio, group)

    def pending_id(self, index: int, *, alias: bool) -> int:
        """GICC_HPPIR (GICC_AHPPIR with `alias`): the highest-priority pending interrupt's ID
        (with the source CPU of an SGI), regardless of the priority mask; 1023 when none."""
        best = self._highest(index)
        if best is None:
            return SPURIOUS
        _, intid, group = best
        if alias and group != 1:
            return SPURIOUS
        if not alias and group == 1 and not self.cpus[index].cpuif.ctlr & GICC_CTLR_ACKCTL:
            return SPURIOUS_GROUP1
        if intid < NR_SGIS:
            return intid | lowest_bit(self.cpus[index].irqs.sources[intid] or 1) << CPUID_SHIFT
        return intid

    def acknowledge(self, index: int, *, alias: bool) -> int:
        """A read of GICC_IAR (GICC_AIAR): the signalled interrupt becomes active and stops being
        pending (an SGI for its lowest requesting CPU only; a level interrupt stays pending while
        its line is high); 1023 (1022 for Group 1 without AckCtl) when there is none to take."""
        best = self._highest(index)
        if best is None:
            return SPURIOUS
        prio, intid, group = best
        cpu = self.cpus[index]
        if not cpu.cpuif.preempts(prio, group):
            return SPURIOUS
        if alias and group != 1:
            return SPURIOUS
        if not alias and group == 1 and not cpu.cpuif.ctlr & GICC_CTLR_ACKCTL:
            return SPURIOUS_GROUP1
        bank, bit = self.bank(index, intid), 1 << intid
        bank.active |= bit
        cpu.cpuif.activate(prio, group)
        if intid < NR_SGIS:
            sources = cpu.irqs.sources[intid]
            source = lowest_bit(sources) if sources else 0
            cpu.irqs.sources[intid] = sources & ~(1 << source)
            cpu.irqs.active_source[intid] = source
            if not cpu.irqs.sources[intid]:
                bank.latch &= ~bit
            return intid | source << CPUID_SHIFT
        bank.latch &= ~bit
        return intid

    def end_of_interrupt(self, index: int, value: int) -> None:
        """A write of GICC_EOIR (or GICC_AEOIR): drop the running priority, and deactivate the
        interrupt unless GICC_CTLR.EOImode splits the two. IDs 1020-1023 are ignored."""
        intid = value & INTID_MASK
        if intid >= 1020:
            return
        cif = self.cpus[index].cpuif
        cif.drop_priority()
        if not cif.split_eoi:
            self.deactivate(index, intid)

    def deactivate(self, index: int, intid: int) -> None:
        """GICC_DIR (or EOIR with EOImode 0): the interrupt is no longer active."""
        if intid < self.nr_irqs:
            self.bank(index, intid).active &= ~(1 << intid)

    def send_sgi(self, index: int, value: int) -> None:
        """vgic_mmio_write_sgir: a GICD_SGIR write by vCPU `index` makes SGI value[3:0] pending
        on the vCPUs its filter and target list name, each remembering the requester."""
        intid = value & 0xF
        targets = (value >> 16) & 0xFF
        mode = (value >> 24) & 3
        if mode == SGIR_FILTER_OTHERS:
            targets = ((1 << len(self.cpus)) - 1) & ~(1 << index)
        elif mode == SGIR_FILTER_SELF:
            targets = 1 << index
        elif mode != SGIR_FILTER_LIST:
            return  # reserved
        for target in each_bit(targets):
            if target < len(self.cpus):
                irqs = self.cpus[target].irqs
                irqs.latch |= 1 << intid
                irqs.sources[intid] |= 1 << index

    def inject(self, index: int | None, intid: int, level: bool) -> None:
        """kvm_vgic_inject_irq: drive a PPI of vCPU `index`, or an SPI (index None). An
        edge-triggered interrupt latches on a rising level; a level one follows it. A PPI that a
        timer drives ignores the VMM (vgic_validate_injection: it has another owner)."""
        self.lazy_init()
        if index is None and intid < NR_PRIVATE_IRQS or intid >= self.nr_irqs:
            raise KvmError(EINVAL, f"vGIC: interrupt {intid} does not exist "
                                   f"({self.nr_irqs} interrupts; SPIs from {NR_PRIVATE_IRQS})")
        bank = self.spis if index is None else self.cpus[index].irqs
        if index is not None:
            owned = self.cpus[index].timer_ppis
            if owned is not None and intid in owned:
                return
        bit = 1 << intid
        if bank.edge & bit:
            if level:
                bank.latch |= bit
        elif level:
            bank.level |= bit
        else:
            bank.level &= ~bit
        self.kick()

    def kick(self) -> None:
        """kvm_vcpu_kick for an interrupt that may now be signalled: wake each vCPU thread that
        waits in KVM_RUN (halted in WFI or PSCI CPU_SUSPEND) and now has its IRQ asserted."""
        for traps in self.vm.vcpus:
            if traps.blocked is not None and not traps.powered_off and self.irq_signaled(traps.index):
                self.vm.host.wake(traps.blocked)
