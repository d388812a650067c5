"""Interrupts delivered through the vGIC: SGIs between vCPUs, the timers' PPIs, SPIs from the
VMM (KVM_IRQ_LINE), the wake-up of a vCPU halted in WFI (kvm_vcpu_kick), and the vGIC's state
carried through KVM_DEV_ARM_VGIC_GRP_DIST_REGS / GRP_CPU_REGS into a second VM, as a migration
does. Model programs run here as guest kernels do: their IRQ handler acknowledges GICC_IAR and
ends with GICC_EOIR."""

from __future__ import annotations

from collections.abc import Callable

from pvtime.abi.gic import (
    GICC_APR0, GICC_BPR, GICC_CTLR, GICC_CTLR_ENABLE_GRP0, GICC_EOIR, GICC_IAR, GICC_PMR,
    GICD_CTLR, GICD_ICACTIVER, GICD_ICENABLER, GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR, GICD_IPRIORITYR, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR, GICD_SGIR,
    GICD_SPENDSGIR,
)
from pvtime.abi.smccc import PSCI_CPU_OFF, PSCI_CPU_SUSPEND
from pvtime.abi.sysregs import CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTVCT_EL0, CTL_ENABLE, CTL_IMASK
from pvtime.abi.uapi import (
    KVM_ARM_IRQ_CPU_FIQ, KVM_ARM_IRQ_CPU_IRQ, KVM_ARM_IRQ_TYPE_CPU, KVM_ARM_IRQ_TYPE_PPI, KVM_ARM_IRQ_TYPE_SPI, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
    KVM_DEV_ARM_VGIC_GRP_CPU_REGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_REG_ARM_TIMER_CVAL, kvm_arm_irq,
    vgic_reg_attr,
)
from pvtime.guest.machine import Compute, WaitForInterrupt
from pvtime.kvm import HaltExit, IntrExit
from pvtime.vmm.gic_state import restore, save
from tests.kvm.test_vgic_env import CPUIF, DIST, Gic, make_vm

DIST_REGS, CPU_REGS = KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS
VTIMER_PPI = 27
HZ = 25_000_000


def enable_cpu(g: Gic, *ids: int) -> None:
    """What Linux's GIC driver does on each CPU: distributor on, interface on for Group 0,
    priority mask 0xF0, and the given interrupts enabled at priority 0xA0."""
    g.dist(GICD_CTLR, 1)
    g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0)
    g.cpu(GICC_PMR, 0xF0)
    for intid in ids:
        g.dist(GICD_ISENABLER + 4 * (intid // 32), 1 << (intid % 32))
        g.view.mmio_write(DIST + GICD_IPRIORITYR + intid, b"\xa0")  # a byte access


class Handler:
    """A model program: `main` runs the steps given; the IRQ handler acknowledges, calls `on_irq`
    (which must quiet the source, as a driver does), and ends the interrupt."""

    def __init__(self, steps: list, on_irq: Callable[[object, int], None] | None = None) -> None:
        self.steps = steps
        self.on_irq = on_irq
        self.taken: list[tuple[int, int]] = []  # (GICC_IAR, CNTVCT at the interrupt)

    def main(self, cpu, index):
        for step in self.steps:
            if callable(step):
                step(cpu)
            else:
                yield step

    def irq(self, cpu, index):
        iar = int.from_bytes(cpu.mmio_read(CPUIF + GICC_IAR, 4), "little")
        self.taken.append((iar, cpu.mrs(CNTVCT_EL0)))
        if self.on_irq is not None:
            self.on_irq(cpu, iar)
        cpu.mmio_write(CPUIF + GICC_EOIR, iar.to_bytes(4, "little"))


def test_sgi_wakes_a_vcpu_halted_in_wfi_and_names_its_source():
    """vgic_mmio_write_sgir queues the SGI and kicks the target: a vCPU thread waiting in
    KVM_RUN (WFI) is woken, takes the SGI, and GICC_IAR carries the requester in CPUID."""
    env = make_vm(3)
    for i in range(3):
        env.guest(i, lambda g: enable_cpu(g))
    waiter = Handler([WaitForInterrupt(), Compute(1_000)])
    env.cpus[1].load(waiter)
    halt = env.run(1, 10_000)
    assert isinstance(halt, HaltExit) and halt.wake_at_ns is None  # nothing armed: only a kick wakes it
    env.guest(0, lambda g: g.dist(GICD_SGIR, 0b001 << 16 | 7))  # SGI 7 to vCPU 0 itself: no wake
    assert env.woken == []
    env.guest(2, lambda g: g.dist(GICD_SGIR, 0b010 << 16 | 7))
    assert env.woken == [env.tasks[1]]
    env.run(1, 10_000)
    assert [iar for iar, _ in waiter.taken] == [2 << 10 | 7]
    assert env.guest(0, lambda g: g.cpu(GICC_IAR)) == 0 << 10 | 7  # vCPU 0's own, from itself


def test_an_sgi_from_two_sources_is_taken_twice():
    """GICv2 keeps an SGI pending per source: each acknowledge takes the lowest source."""
    env = make_vm(3)
    for i in range(3):
        env.guest(i, lambda g: enable_cpu(g))
    env.guest(2, lambda g: g.dist(GICD_SGIR, 1 << 16 | 4))
    env.guest(1, lambda g: g.dist(GICD_SGIR, 1 << 16 | 4))

    def take_all(g: Gic) -> list[int]:
        seen = []
        while (iar := g.cpu(GICC_IAR)) != 1023:
            seen.append(iar)
            g.cpu(GICC_EOIR, iar)
        return seen
    assert env.guest(0, take_all) == [1 << 10 | 4, 2 << 10 | 4]


def arm_vtimer(after_ticks: int) -> Callable[[object], None]:
    def step(cpu) -> None:
        cpu.msr(CNTV_CVAL_EL0, cpu.mrs(CNTVCT_EL0) + after_ticks)
        cpu.msr(CNTV_CTL_EL0, CTL_ENABLE)
    return step


def mask_vtimer(cpu, iar: int) -> None:
    cpu.msr(CNTV_CTL_EL0, CTL_ENABLE | CTL_IMASK)  # as Linux's arch_timer_handler_virt


def test_virtual_timer_raises_its_ppi_at_the_deadline():
    """kvm_timer_update_irq drives PPI 27 (the default) level-sensitively: the vCPU takes it
    the instant CNTVCT reaches CVAL, and not again once the handler masks the timer."""
    env = make_vm(1)
    env.guest(0, lambda g: enable_cpu(g, VTIMER_PPI))
    program = Handler([arm_vtimer(250), Compute(100_000)], mask_vtimer)
    env.cpus[0].load(program)
    start = env.host.counter()
    env.run(0, 200_000)
    assert program.taken == [(VTIMER_PPI, start + 250)]


def test_a_disabled_timer_ppi_is_pending_but_not_taken():
    """With the PPI disabled in the distributor the line only shows in GICD_ISPENDR0."""
    env = make_vm(1)
    env.guest(0, lambda g: enable_cpu(g))
    program = Handler([arm_vtimer(250), Compute(1_000_000)])
    env.cpus[0].load(program)
    assert isinstance(env.run(0, 200_000), IntrExit)  # the slice ended, the timer long expired
    assert program.taken == []
    assert env.guest(0, lambda g: g.dist(GICD_ISPENDR)) >> VTIMER_PPI & 1


def test_timer_ppi_follows_the_vcpu_attribute():
    """KVM_ARM_VCPU_TIMER_IRQ_VTIMER = 20: the virtual timer raises PPI 20 instead."""
    env = make_vm(1)
    env.vcpus[0].set_device_attr(KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER, 20)
    env.guest(0, lambda g: enable_cpu(g, 20, VTIMER_PPI))
    program = Handler([arm_vtimer(100), Compute(100_000)], mask_vtimer)
    env.cpus[0].load(program)
    env.run(0, 200_000)
    assert [iar for iar, _ in program.taken] == [20]


def test_a_vcpu_halted_with_its_timer_armed_wakes_at_the_deadline():
    """kvm_timer_schedule: a halted vCPU's thread sleeps until its timer's line rises; once the
    line is high it cannot rise again, so no timed wake is left (only a kick)."""
    env = make_vm(1)
    env.guest(0, lambda g: enable_cpu(g, VTIMER_PPI))
    program = Handler([arm_vtimer(1_000), WaitForInterrupt(), Compute(10)], mask_vtimer)
    env.cpus[0].load(program)
    halt = env.run(0, 10_000)
    assert isinstance(halt, HaltExit)
    deadline = env.host.counter_to_ns(env.vcpus[0].get_one_reg(KVM_REG_ARM_TIMER_CVAL))
    assert halt.wake_at_ns == deadline
    with env.host.on_cpu(env.tasks[0], 10_000, start_ns=deadline):
        env.vcpus[0].run()
    assert [iar for iar, _ in program.taken] == [VTIMER_PPI]


def test_level_spi_is_taken_while_high_and_edge_spi_once():
    """kvm_vgic_inject_irq: a level SPI follows its line (after the EOI it is taken again while
    the line stays high); an edge SPI (GICD_ICFGR) latches a rising line, taken once."""
    env = make_vm(2)
    env.guest(0, lambda g: (enable_cpu(g, 40, 41), g.dist(GICD_ICFGR + 8, 0b10 << 18),
                            g.dist(GICD_ITARGETSR + 40, 0x0202)))  # 40 and 41 to vCPU 1; 41 edge
    env.guest(1, lambda g: enable_cpu(g))
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 40), 1)
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 41), 1)

    def take(g: Gic, n: int) -> list[int]:
        seen = []
        for _ in range(n):
            iar = g.cpu(GICC_IAR)
            seen.append(iar)
            g.cpu(GICC_EOIR, iar)
        return seen
    assert env.guest(0, lambda g: g.cpu(GICC_IAR)) == 1023  # routed to vCPU 1
    assert env.guest(1, lambda g: take(g, 3)) == [40, 40, 40]  # the lower ID first, while high
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 40), 0)
    assert env.guest(1, lambda g: take(g, 2)) == [41, 1023]


def test_irq_line_wakes_a_halted_target_only():
    """An SPI raised by the VMM kicks its target vCPU's waiting thread; a disabled one, or one
    routed elsewhere, wakes nothing."""
    env = make_vm(2)
    env.guest(0, lambda g: (enable_cpu(g, 40), g.dist(GICD_ITARGETSR + 40, 0x02)))
    env.guest(1, lambda g: enable_cpu(g))
    for i in (0, 1):
        env.cpus[i].load(Handler([WaitForInterrupt()]))
        assert isinstance(env.run(i, 1_000), HaltExit)
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 45), 1)  # not enabled
    assert env.woken == []
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 40), 1)
    assert env.woken == [env.tasks[1]]


def test_vmm_ppi_injection_and_the_timer_owning_its_ppi():
    """KVM_ARM_IRQ_TYPE_PPI reaches one vCPU's PPI; the timer's PPI is the timer's alone
    (vgic_validate_injection: another owner) once the vCPU has run."""
    env = make_vm(2)
    for i in (0, 1):
        env.guest(i, lambda g: enable_cpu(g, 22, VTIMER_PPI))
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 1, 22), 1)
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 1, VTIMER_PPI), 1)
    assert env.guest(0, lambda g: g.dist(GICD_ISPENDR)) >> 16 == 0
    assert env.guest(1, lambda g: g.dist(GICD_ISPENDR)) >> 16 == 1 << (22 - 16)


def test_vcpu_reset_clears_the_timer_ppis():
    """kvm_timer_vcpu_reset -> kvm_vgic_reset_mapped_irq: after KVM_ARM_VCPU_INIT the timer PPI
    is neither active nor pending."""
    env = make_vm(1)
    env.guest(0, lambda g: enable_cpu(g, VTIMER_PPI))
    taken = env.guest(0, lambda g: (arm_vtimer(0)(g.view), g.cpu(GICC_IAR))[1])
    assert taken == VTIMER_PPI
    assert env.guest(0, lambda g: g.dist(GICD_ISACTIVER)) == 1 << VTIMER_PPI
    env.vcpus[0].init()
    assert env.guest(0, lambda g: g.dist(GICD_ISACTIVER) | g.dist(GICD_ISPENDR)) == 0


# --- save and restore through the register groups ---------------------------------------------

def test_state_saved_through_the_register_groups_restores_into_another_vm():
    """vgic_v2_dist_uaccess / vgic_v2_cpuif_uaccess: enabled, pending (SPIs, a PPI, an SGI with
    its source), active (with the CPU interface's active priority), priorities, targets,
    configuration, groups and the CPU interfaces read back the same from a second VM, and the
    restored vCPU takes the same interrupt next."""
    a = make_vm(2)
    a.guest(0, lambda g: (enable_cpu(g, 40, 41, 42, 43), g.dist(GICD_ITARGETSR + 40, 0x01_01_02_02),
                          g.dist(GICD_ICFGR + 8, 0b10 << 20), g.dist(GICD_IGROUPR + 4, 1 << 11),
                          g.dist(GICD_IPRIORITYR + 40, 0x20_30_40_50), g.dist(GICD_ISPENDR, 1 << 20)))
    a.guest(1, lambda g: (enable_cpu(g), g.cpu(GICC_PMR, 0xE8), g.cpu(GICC_BPR, 3)))
    for intid in (40, 41, 42):
        a.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, intid), 1)
    a.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 42), 0)  # edge: latched anyway
    assert a.guest(1, lambda g: g.cpu(GICC_IAR)) == 41  # active on vCPU 1, its priority running
    a.guest(0, lambda g: g.dist(GICD_SGIR, 0b10 << 16 | 3))
    gic_a = a.gic
    assert gic_a is not None
    state = save(gic_a, [0, 1])
    assert state[(DIST_REGS, 0, GICD_ISACTIVER + 4)] == 1 << 9 and state[(CPU_REGS, 1, GICC_APR0)] == 1 << 8
    assert state[(DIST_REGS, 1, GICD_SPENDSGIR)] == 1 << 24  # SGI 3 from vCPU 0

    b = make_vm(2)
    gic_b = b.gic
    assert gic_b is not None
    restore(gic_b, state)
    assert save(gic_b, [0, 1]) == state

    def next_steps(g: Gic) -> list[int]:
        sgi = g.cpu(GICC_IAR)  # SGI 3 (priority 0) preempts the running 41 (0x40)
        g.cpu(GICC_EOIR, sgi)
        g.cpu(GICC_EOIR, 41)
        return [sgi, g.cpu(GICC_IAR)]  # 41 again: still pending (its line, its restored latch)
    assert a.guest(1, next_steps) == b.guest(1, next_steps) == [3, 41]
    assert all(isinstance(ex, IntrExit) for ex in b.exits)


def test_restore_ignores_the_group_without_iidr():
    """Without the GICD_IIDR write, a legacy VMM's group bits are dropped (KVM keeps its default
    Group 0): the ordering the restore above follows matters."""
    a = make_vm(1)
    a.guest(0, lambda g: g.dist(GICD_IGROUPR + 4, 0xF))
    gic_a, b = a.gic, make_vm(1)
    assert gic_a is not None and b.gic is not None
    value = gic_a.get_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_IGROUPR + 4))
    b.gic.set_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_IGROUPR + 4), value)
    assert b.gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_IGROUPR + 4)) == 0


def test_cleared_state_registers():
    """GICD_ICENABLER/ICPENDR/ICACTIVER written by userspace clear what they name."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    for set_off, clear_off in ((GICD_ISENABLER, GICD_ICENABLER), (GICD_ISPENDR, GICD_ICPENDR),
                               (GICD_ISACTIVER, GICD_ICACTIVER)):
        gic.set_device_attr(DIST_REGS, vgic_reg_attr(0, set_off + 4), 0xF0)
        gic.set_device_attr(DIST_REGS, vgic_reg_attr(0, clear_off + 4), 0x30)
        assert gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, set_off + 4)) == 0xC0


def test_psci_cpu_suspend_waits_for_a_vgic_interrupt():
    """kvm_psci_vcpu_suspend -> kvm_vcpu_wfi: the vCPU waits in KVM_RUN until an interrupt is
    pending for it; an SGI from another vCPU wakes its thread, and the call then returns."""
    env = make_vm(2)
    for i in (0, 1):
        env.guest(i, lambda g: enable_cpu(g))
    env.guest(1, lambda g: g.view.hvc(PSCI_CPU_SUSPEND))
    halt = env.exits[-1]
    assert isinstance(halt, HaltExit) and halt.wake_at_ns is None
    env.guest(0, lambda g: g.dist(GICD_SGIR, 0b10 << 16 | 1))
    assert env.woken == [env.tasks[1]]
    assert env.guest(1, lambda g: g.cpu(GICC_IAR)) == 1  # resumed: its guest code runs again


def test_a_powered_off_vcpu_is_not_woken_by_an_interrupt():
    """A vCPU off after PSCI CPU_OFF waits for CPU_ON, not for interrupts."""
    env = make_vm(2)
    for i in (0, 1):
        env.guest(i, lambda g: enable_cpu(g))
    env.guest(1, lambda g: g.view.hvc(PSCI_CPU_OFF))
    env.guest(0, lambda g: g.dist(GICD_SGIR, 0b10 << 16 | 1))
    assert env.woken == []


def test_cpu_irq_line_wakes_a_halted_vcpu_without_a_vgic():
    """vcpu_interrupt_line kicks the vCPU: raising its IRQ input wakes a thread halted in WFI."""
    env = make_vm(1, gic=False)
    env.cpus[0].load(Handler([WaitForInterrupt()]))
    assert isinstance(env.run(0, 1_000), HaltExit)
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 0, KVM_ARM_IRQ_CPU_FIQ), 1)  # FIQ: not taken
    assert env.woken == []
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 0, KVM_ARM_IRQ_CPU_IRQ), 1)
    assert env.woken == [env.tasks[0]]
