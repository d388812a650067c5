"""The vGICv2's registers as guest code reaches them: the distributor as Linux's
arch/arm64/kvm/vgic/vgic-mmio-v2.c and vgic-mmio.c emulate it, and the GICv2 CPU interface
(IHI 0048B) the guest acknowledges interrupts through. Every access here is handled inside
KVM_RUN: none reaches the VMM."""

from __future__ import annotations

import pytest

from pvtime.abi.gic import (
    GICC_ABPR, GICC_AEOIR, GICC_AHPPIR, GICC_AIAR, GICC_APR0, GICC_BPR, GICC_CTLR, GICC_CTLR_ACKCTL,
    GICC_CTLR_ENABLE_GRP0, GICC_CTLR_ENABLE_GRP1, GICC_CTLR_EOIMODE, GICC_CTLR_FIQEN, GICC_DIR, GICC_EOIR, GICC_HPPIR,
    GICC_IAR, GICC_IIDR, GICC_PMR, GICC_RPR, GICD_CPENDSGIR, GICD_CTLR, GICD_ICACTIVER, GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR, GICD_IIDR, GICD_IPRIORITYR, GICD_ISACTIVER, GICD_ISENABLER,
    GICD_ISPENDR, GICD_ITARGETSR, GICD_SGIR, GICD_SPENDSGIR, GICD_TYPER, SPURIOUS, SPURIOUS_GROUP1,
)
from pvtime.abi.uapi import KVM_ARM_IRQ_TYPE_SPI, kvm_arm_irq
from pvtime.cpu.backend import GuestFault
from pvtime.guest.machine import Compute, MmioRead, MmioWrite
from pvtime.kvm import MmioExit
from tests.kvm.test_vgic_env import DIST, Gic, GicVm, make_vm


def booted(n: int = 2, *, pmr: int = 0xF0) -> GicVm:
    """A VM whose vCPUs have each run once (the vGIC is mapped), the distributor and every CPU
    interface enabled for Group 0, with priority mask `pmr`."""
    env = make_vm(n)
    for i in range(n):
        env.guest(i, lambda g: (g.dist(GICD_CTLR, 1), g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0), g.cpu(GICC_PMR, pmr)))
    return env


def spi(env: GicVm, intid: int, level: int = 1) -> None:
    """The VMM drives SPI `intid` (KVM_IRQ_LINE)."""
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, intid), level)


def bit_reg(base: int, intid: int) -> tuple[int, int]:
    """The register of a 1-bit-per-interrupt array holding `intid`, and its bit."""
    return base + 4 * (intid // 32), 1 << (intid % 32)


def test_identification_registers():
    """vgic_mmio_read_v2_misc: GICD_TYPER (ITLinesNumber, CPUNumber), GICD_IIDR (KVM, rev 3,
    Arm); vgic_mmio_read_vcpuif: GICC_IIDR (KVM, GICv2, Arm); the binary points read at least
    their minimum for 32 priority levels."""
    env = booted(3)
    got = env.guest(2, lambda g: [g.dist(GICD_TYPER), g.dist(GICD_IIDR), g.cpu(GICC_IIDR),
                                  g.cpu(GICC_BPR), g.cpu(GICC_ABPR), g.cpu(GICC_RPR)])
    assert got == [7 | 2 << 5, 0x4B00_343B, 0x4B << 20 | 2 << 16 | 0x43B, 2, 3, 0xFF]
    assert not any(isinstance(ex, MmioExit) for ex in env.exits)


def test_private_targets_are_banked_and_read_only():
    """GICD_ITARGETSR0-7 read each vCPU's own bit (Linux's gic_get_cpumask relies on it) and
    ignore writes (vgic_mmio_write_target)."""
    env = booted(3)
    for i in range(3):
        assert env.guest(i, lambda g: (g.dist(GICD_ITARGETSR + 4, 0), g.dist(GICD_ITARGETSR + 4))[1]) == (1 << i) * 0x0101_0101


def test_spi_targets_keep_only_existing_vcpus():
    """vgic_mmio_write_target: an SPI's targets are masked to the VM's vCPUs."""
    env = booted(2)
    assert env.guest(0, lambda g: (g.dist(GICD_ITARGETSR + 40, 0xFF_0F_03_06), g.dist(GICD_ITARGETSR + 40))[1]) \
        == 0x03_03_03_02


def test_configuration_of_private_interrupts_is_fixed():
    """vgic_mmio_write_config: SGIs read edge, PPIs level, and both ignore writes; SPIs follow
    the Int_config[1] bits written."""
    env = booted(1)
    got = env.guest(0, lambda g: [g.dist(GICD_ICFGR, 0), g.dist(GICD_ICFGR + 4, 0xFFFF_FFFF),
                                  g.dist(GICD_ICFGR), g.dist(GICD_ICFGR + 4),
                                  g.dist(GICD_ICFGR + 8, 0xFFFF_FFFF), g.dist(GICD_ICFGR + 8)])
    assert got[2:4] == [0xAAAA_AAAA, 0] and got[5] == 0xAAAA_AAAA


def test_enable_set_and_clear_registers():
    """vgic_mmio_write_senable / _cenable: writing 1 sets or clears, 0 leaves; both read the
    enable bits. SGIs are enabled from reset (vgic_allocate_private_irqs)."""
    env = booted(1)
    reg, _ = bit_reg(GICD_ISENABLER, 40)

    def code(g: Gic) -> list[int]:
        before = g.dist(GICD_ISENABLER)
        g.dist(reg, 0b1111 << 8)
        g.dist(reg + 0x80, 0b0101 << 8)  # the GICD_ICENABLER twin
        return [before, g.dist(reg), g.dist(reg + 0x80)]
    assert env.guest(0, code) == [0xFFFF, 0b1010 << 8, 0b1010 << 8]


def test_priorities_keep_five_bits_and_take_byte_accesses():
    """vgic_mmio_write_priority keeps bits [7:3]; GICD_IPRIORITYR takes 8- and 32-bit accesses,
    a 16-bit one reads zero and is ignored (check_region), as is a misaligned word."""
    env = booted(1)

    def code(g: Gic) -> list[int]:
        g.dist(GICD_IPRIORITYR + 32, 0xFF_A7_13_01)
        g.view.mmio_write(DIST + GICD_IPRIORITYR + 37, b"\x5f")
        g.view.mmio_write(DIST + GICD_IPRIORITYR + 38, b"\xff\xff")
        g.view.mmio_write(DIST + GICD_IPRIORITYR + 41, b"\xff\xff\xff\xff")
        return [g.dist(GICD_IPRIORITYR + 32), int.from_bytes(g.view.mmio_read(DIST + GICD_IPRIORITYR + 37, 1), "little"),
                g.dist(GICD_IPRIORITYR + 36), int.from_bytes(g.view.mmio_read(DIST + GICD_IPRIORITYR + 32, 2), "little"),
                g.dist(GICD_IPRIORITYR + 40)]
    assert env.guest(0, code) == [0xF8_A0_10_00, 0x58, 0x58 << 8, 0, 0]


def test_registers_of_interrupts_past_the_last_read_zero():
    """check_region: a per-interrupt register beyond nr_irqs is RAZ/WI."""
    env = booted(1)
    reg, bit = bit_reg(GICD_ISENABLER, 300)
    assert env.guest(0, lambda g: (g.dist(reg, 0xFFFF_FFFF), g.dist(reg))[1]) == 0


def test_group_registers():
    """GICD_IGROUPR is guest-writable (IIDR revision 2 and up: configurable groups)."""
    env = booted(1)
    assert env.guest(0, lambda g: (g.dist(GICD_IGROUPR + 4, 0x8001), g.dist(GICD_IGROUPR + 4))[1]) == 0x8001


def test_pending_set_clear_and_sgi_bits_are_wi():
    """vgic_mmio_write_spending / _cpending: SPIs and PPIs latch and clear; the SGI bits of
    GICD_ISPENDR0/ICPENDR0 are WI (SGIs go through GICD_SGIR and the SGI pending registers)."""
    env = booted(1)

    def code(g: Gic) -> list[int]:
        g.dist(GICD_ISPENDR, 0xFFFF_FFFF)
        g.dist(GICD_ISPENDR + 4, 0b11)
        first = [g.dist(GICD_ISPENDR), g.dist(GICD_ICPENDR + 4)]
        g.dist(GICD_ICPENDR, 0xFFFF_FFFF)
        g.dist(GICD_ICPENDR + 4, 0b01)
        return first + [g.dist(GICD_ISPENDR), g.dist(GICD_ISPENDR + 4)]
    assert env.guest(0, code) == [0xFFFF_0000, 0b11, 0, 0b10]


def test_active_set_and_clear():
    env = booted(1)

    def code(g: Gic) -> list[int]:
        g.dist(GICD_ISACTIVER + 4, 0b110)
        g.dist(GICD_ICACTIVER + 4, 0b010)
        return [g.dist(GICD_ISACTIVER + 4), g.dist(GICD_ICACTIVER + 4)]
    assert env.guest(0, code) == [0b100, 0b100]


@pytest.mark.parametrize(("value", "reached"), [
    (0b0110 << 16 | 5, [False, True, True, False]),  # target list: vCPUs 1 and 2
    (1 << 24 | 5, [False, True, True, True]),  # all but the requester
    (2 << 24 | 5, [True, False, False, False]),  # the requester only
    (3 << 24 | 0xFF << 16 | 5, [False, False, False, False]),  # reserved filter: nothing
    (0xF0 << 16 | 5, [False, False, False, False]),  # CPUs the VM does not have
])
def test_sgir_target_list_filter(value, reached):
    """vgic_mmio_write_sgir: TargetListFilter 0 list, 1 others, 2 self, 3 reserved; each reached
    vCPU has SGI 5 pending from vCPU 0 (GICD_SPENDSGIR byte 5, bit 0)."""
    env = booted(4)
    env.guest(0, lambda g: g.dist(GICD_SGIR, value))
    pending = [env.guest(i, lambda g: (g.dist(GICD_ISPENDR) >> 5 & 1, g.dist(GICD_SPENDSGIR + 4) >> 8 & 0xFF))
               for i in range(4)]
    assert pending == [(1, 1) if hit else (0, 0) for hit in reached]


def test_sgi_sources_set_and_clear():
    """vgic_mmio_write_sgipends / _sgipendc: a byte per SGI, a bit per source vCPU; the SGI is
    pending while any source is."""
    env = booted(3)
    env.guest(1, lambda g: g.dist(GICD_SGIR, 1 << 16 | 2))
    env.guest(2, lambda g: g.dist(GICD_SGIR, 1 << 16 | 2))

    def code(g: Gic) -> list[int]:
        seen = [g.dist(GICD_SPENDSGIR), g.dist(GICD_CPENDSGIR)]
        g.dist(GICD_CPENDSGIR, 0b010 << 16)
        seen.append(g.dist(GICD_ISPENDR) & 0xFFFF)
        g.view.mmio_write(DIST + GICD_CPENDSGIR + 2, b"\x04")  # byte access
        seen.append(g.dist(GICD_ISPENDR) & 0xFFFF)
        g.dist(GICD_SPENDSGIR + 12, 1 << 24)  # SGI 15 from vCPU 0
        seen.append(g.dist(GICD_ISPENDR) & 0xFFFF)
        return seen
    assert env.guest(0, code) == [0b110 << 16, 0b110 << 16, 1 << 2, 0, 1 << 15]


def test_acknowledge_takes_the_highest_priority_and_eoi_restores_the_running_priority():
    """GICC_IAR returns the highest-priority pending interrupt (lowest ID among equals) and
    makes it active; GICC_RPR and GICC_APR0 show the active priority until GICC_EOIR drops it
    and deactivates the interrupt."""
    env = booted(1)
    env.guest(0, lambda g: (g.dist(GICD_ISENABLER + 4, 0b111 << 8),
                            g.dist(GICD_IPRIORITYR + 40, 0x80_40_80)))  # SPIs 40, 41, 42: 0x80, 0x40, 0x80
    for intid in (40, 41, 42):
        spi(env, intid)

    def take(g: Gic) -> int:
        """Acknowledge, let the device lower its (level) line, end the interrupt."""
        intid = g.cpu(GICC_IAR)
        spi(env, intid, 0)
        g.cpu(GICC_EOIR, intid)
        return intid

    def code(g: Gic) -> list[int]:
        hppir = g.cpu(GICC_HPPIR)
        first = g.cpu(GICC_IAR)
        during = [g.cpu(GICC_RPR), g.cpu(GICC_APR0), g.dist(GICD_ISACTIVER + 4) >> 8, g.cpu(GICC_IAR)]
        spi(env, first, 0)
        g.cpu(GICC_EOIR, first)
        return [hppir, first, *during, take(g), take(g), g.cpu(GICC_RPR), g.dist(GICD_ISACTIVER + 4)]
    assert env.guest(0, code) == [41, 41, 0x40, 1 << 8, 0b010, SPURIOUS, 40, 42, 0xFF, 0]


def test_priority_mask_and_preemption():
    """An interrupt is signalled only above GICC_PMR and above the running priority: an equal
    or lower one waits for the EOI, a higher one preempts."""
    env = booted(1, pmr=0x90)
    env.guest(0, lambda g: (g.dist(GICD_ISENABLER + 4, 0b111 << 8),
                            g.dist(GICD_IPRIORITYR + 40, 0x20_90_60)))  # 40: 0x60, 41: 0x90, 42: 0x20
    spi(env, 40)
    spi(env, 41)
    traps = env.cpus[0]

    def code(g: Gic) -> list[object]:
        first = g.cpu(GICC_IAR)  # 41 is at the mask: only 40 qualifies
        pending_after = traps.traps.irq_pending()
        spi(env, 42)  # higher than the running 0x60: preempts
        preempt = [traps.traps.irq_pending(), g.cpu(GICC_IAR), g.cpu(GICC_RPR)]
        spi(env, 42, 0)
        g.cpu(GICC_EOIR, 42)
        g.cpu(GICC_EOIR, 40)  # 40's line is still high: pending again
        return [first, pending_after, *preempt, g.cpu(GICC_HPPIR), g.cpu(GICC_IAR)]
    assert env.guest(0, code) == [40, False, True, 42, 0x20, 40, 40]


def test_disabled_interfaces_signal_nothing():
    """Nothing is forwarded while GICD_CTLR or the group's GICC_CTLR enable is clear."""
    env = booted(1)
    env.guest(0, lambda g: g.dist(GICD_ISENABLER + 4, 1 << 8))
    spi(env, 40)
    traps = env.cpus[0]

    def code(g: Gic) -> list[object]:
        out: list[object] = []
        g.dist(GICD_CTLR, 0)
        out += [traps.traps.irq_pending(), g.cpu(GICC_IAR)]
        g.dist(GICD_CTLR, 1)
        g.cpu(GICC_CTLR, 0)
        out += [traps.traps.irq_pending(), g.cpu(GICC_IAR)]
        g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0)
        out += [traps.traps.irq_pending(), g.cpu(GICC_IAR)]
        return out
    assert env.guest(0, code) == [False, SPURIOUS, False, SPURIOUS, True, 40]


def test_split_eoi_needs_dir_to_deactivate():
    """GICC_CTLR.EOImode = 1: GICC_EOIR only drops the priority, GICC_DIR deactivates."""
    env = booted(1)
    env.guest(0, lambda g: (g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_EOIMODE),
                            g.dist(GICD_ISENABLER + 4, 1 << 8)))
    spi(env, 40)

    def code(g: Gic) -> list[int]:
        intid = g.cpu(GICC_IAR)
        g.cpu(GICC_EOIR, intid)
        after_eoi = [g.cpu(GICC_RPR), g.dist(GICD_ISACTIVER + 4) >> 8 & 1]
        g.cpu(GICC_DIR, intid)
        return [intid, *after_eoi, g.dist(GICD_ISACTIVER + 4) >> 8 & 1]
    assert env.guest(0, code) == [40, 0xFF, 1, 0]


def test_group1_needs_ackctl_or_the_alias_registers():
    """A Group 1 interrupt: GICC_IAR reads 1022 unless GICC_CTLR.AckCtl; GICC_AIAR and
    GICC_AHPPIR take Group 1 only; GICC_AEOIR ends it."""
    env = booted(1)
    env.guest(0, lambda g: (g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_ENABLE_GRP1),
                            g.dist(GICD_IGROUPR + 4, 1 << 8), g.dist(GICD_ISENABLER + 4, 0b11 << 8)))
    spi(env, 40)

    def code(g: Gic) -> list[int]:
        seen = [g.cpu(GICC_HPPIR), g.cpu(GICC_IAR), g.cpu(GICC_AHPPIR)]
        intid = g.cpu(GICC_AIAR)
        g.cpu(GICC_AEOIR, intid)
        spi(env, 40, 0)
        spi(env, 41)  # Group 0: the alias does not take it
        seen += [intid, g.cpu(GICC_AIAR), g.cpu(GICC_IAR)]
        g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_ENABLE_GRP1 | GICC_CTLR_ACKCTL)
        g.cpu(GICC_EOIR, 41)
        spi(env, 41, 0)
        spi(env, 40)
        return [*seen, g.cpu(GICC_IAR)]
    assert env.guest(0, code) == [SPURIOUS_GROUP1, SPURIOUS_GROUP1, 40, 40, SPURIOUS, 41, 40]


def test_a_model_program_reaches_the_vgic_without_exiting():
    """kvm_io_bus: an MmioRead/MmioWrite action of a model program in the vGIC's frames is
    completed inside KVM_RUN; outside them it is an MMIO exit for the VMM."""
    env = booted(1)
    got: list[bytes | None] = []

    class Program:
        def main(self, cpu, index):
            got.append((yield MmioRead(DIST + GICD_TYPER, 4)))
            yield MmioWrite(DIST + GICD_ISENABLER + 4, (1 << 8).to_bytes(4, "little"))
            got.append((yield MmioRead(DIST + GICD_ISENABLER + 4, 4)))
            got.append((yield MmioRead(0x0900_0000, 4)))  # a device of the VMM's
            yield Compute(10)

        def irq(self, cpu, index):
            raise AssertionError("no interrupt is pending")

    env.cpus[0].load(Program())
    ex = env.run(0, 1_000)
    assert isinstance(ex, MmioExit) and ex.phys_addr == 0x0900_0000 and not ex.is_write
    assert got == [(7).to_bytes(4, "little"), (1 << 8).to_bytes(4, "little")]


def test_without_a_vgic_guest_code_cannot_reach_one():
    """GuestView.mmio_read/mmio_write reach in-kernel devices only: elsewhere they fault."""
    env = make_vm(1, gic=False)
    with pytest.raises(GuestFault):
        env.guest(0, lambda g: g.dist(GICD_TYPER))


def test_binary_point_groups_priorities_for_preemption():
    """GICC_BPR n keeps priority bits [7:n+1] for preemption: with BPR 3, 0x48 does not preempt
    a running 0x40 (same group priority 0x40), 0x30 does."""
    env = booted(1)
    env.guest(0, lambda g: (g.cpu(GICC_BPR, 3), g.dist(GICD_ISENABLER + 4, 0b111 << 8),
                            g.dist(GICD_IPRIORITYR + 40, 0x30_48_40)))
    spi(env, 40)

    def code(g: Gic) -> list[int]:
        first = g.cpu(GICC_IAR)
        spi(env, 41)
        blocked = g.cpu(GICC_IAR)
        spi(env, 42)
        return [first, blocked, g.cpu(GICC_IAR), g.cpu(GICC_BPR), g.cpu(GICC_APR0)]
    assert env.guest(0, code) == [40, SPURIOUS, 42, 3, 1 << (0x40 >> 3) | 1 << (0x30 >> 3)]


def test_fiq_enabled_group0_is_not_an_irq():
    """GICC_CTLR.FIQEn signals Group 0 as FIQ, which a pvtime vCPU does not take; GICC_IAR still
    acknowledges it."""
    env = booted(1)
    env.guest(0, lambda g: (g.cpu(GICC_CTLR, GICC_CTLR_ENABLE_GRP0 | GICC_CTLR_FIQEN),
                            g.dist(GICD_ISENABLER + 4, 1 << 8)))
    spi(env, 40)
    traps = env.cpus[0]
    assert env.guest(0, lambda g: (traps.traps.irq_pending(), g.cpu(GICC_IAR))) == (False, 40)
