"""The device tree a VMM hands a Linux guest on the QEMU `virt` layout.

It describes what pvtime's machine has, as QEMU's hw/arm/virt.c does for the same devices (and
the bindings in Linux's Documentation/devicetree/bindings say): RAM, the CPUs with the PSCI
enable method, PSCI over HVC, the generic timer's four PPIs, the GICv2 when the VM has a vGIC,
the PL011 with its clock and interrupt, and /chosen (bootargs, initrd range, stdout-path).

The stolen-time records need no node: they are plain memory outside the memory node, and the
guest learns their addresses from PV_TIME_ST.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvtime.abi.uapi import (
    KVM_ARM_TIMER_DEFAULT_PPIS, KVM_ARM_VCPU_TIMER_IRQ_HPTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER,
    KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
)
from pvtime.vmm.fdt import FdtWriter
from pvtime.vmm.layout import QEMU_VIRT, QEMU_VIRT_GIC, GicV2Layout, Layout

# include/dt-bindings/interrupt-controller/arm-gic.h and irq.h
GIC_SPI = 0
GIC_PPI = 1
IRQ_TYPE_LEVEL_HIGH = 4
PPI_BASE = 16  # INTIDs 16-31 are PPIs: a PPI's DT number is its INTID - 16
SPI_BASE = 32
APB_PCLK_HZ = 24_000_000  # QEMU virt's fixed 24 MHz clock for the PL011
GIC_PHANDLE = 1
CLOCK_PHANDLE = 2
MPIDR_AFFINITY = 0xFF_00FF_FFFF  # Aff3..Aff0: what a cpu node's reg holds


@dataclass(frozen=True)
class TimerIntids:
    """The INTIDs the generic timers raise (KVM_ARM_VCPU_TIMER_IRQ_*, KVM's defaults unless set)."""

    vtimer: int = KVM_ARM_TIMER_DEFAULT_PPIS[KVM_ARM_VCPU_TIMER_IRQ_VTIMER]
    ptimer: int = KVM_ARM_TIMER_DEFAULT_PPIS[KVM_ARM_VCPU_TIMER_IRQ_PTIMER]
    secure: int = 29  # not raised under KVM; the binding wants all four
    hyp: int = KVM_ARM_TIMER_DEFAULT_PPIS[KVM_ARM_VCPU_TIMER_IRQ_HPTIMER]


@dataclass(frozen=True)
class DeviceTreeSpec:
    """What the tree describes."""

    mpidrs: tuple[int, ...]  # each vCPU's MPIDR_EL1, as KVM_GET_ONE_REG reads it
    ram_size: int
    layout: Layout = QEMU_VIRT
    gic: GicV2Layout | None = QEMU_VIRT_GIC  # None: the VM has no vGIC, so no interrupt controller
    timers: TimerIntids = TimerIntids()
    bootargs: str = ""
    initrd: tuple[int, int] | None = None  # [start, end) guest physical
    psci_method: str = "hvc"


def virt_device_tree(spec: DeviceTreeSpec) -> bytes:
    """The DTB for `spec`."""
    if spec.psci_method not in ("hvc", "smc"):
        raise ValueError(f"psci_method must be hvc or smc, got {spec.psci_method!r}")
    lay = spec.layout
    w = FdtWriter()
    w.begin_node("")
    w.prop_str("compatible", "linux,dummy-virt")
    w.prop_str("model", "pvtime virt")
    w.prop_u32("#address-cells", 2)
    w.prop_u32("#size-cells", 2)
    if spec.gic is not None:
        w.prop_u32("interrupt-parent", GIC_PHANDLE)

    w.begin_node("chosen")
    w.prop_str("bootargs", spec.bootargs)
    w.prop_str("stdout-path", f"/pl011@{lay.uart_base:x}")
    if spec.initrd is not None:
        w.prop_u64("linux,initrd-start", spec.initrd[0])
        w.prop_u64("linux,initrd-end", spec.initrd[1])
    w.end_node()

    w.begin_node(f"memory@{lay.ram_base:x}")
    w.prop_str("device_type", "memory")
    w.prop_u64("reg", lay.ram_base, spec.ram_size)
    w.end_node()

    w.begin_node("cpus")
    w.prop_u32("#address-cells", 1)
    w.prop_u32("#size-cells", 0)
    for mpidr in spec.mpidrs:
        aff = mpidr & MPIDR_AFFINITY
        w.begin_node(f"cpu@{aff:x}")
        w.prop_str("device_type", "cpu")
        w.prop_str("compatible", "arm,arm-v8")
        w.prop_u32("reg", aff)  # one cell: Aff3 is 0 for every vCPU KVM creates
        w.prop_str("enable-method", "psci")
        w.end_node()
    w.end_node()

    w.begin_node("psci")
    w.prop_str("compatible", "arm,psci-1.0", "arm,psci-0.2", "arm,psci")
    w.prop_str("method", spec.psci_method)
    w.end_node()

    if spec.gic is not None:
        g = spec.gic
        w.begin_node(f"intc@{g.dist_base:x}")
        w.prop_u32("phandle", GIC_PHANDLE)
        w.prop_str("compatible", "arm,cortex-a15-gic")
        w.prop_u32("#interrupt-cells", 3)
        w.prop("interrupt-controller")
        w.prop_u64("reg", g.dist_base, g.dist_size, g.cpu_base, g.cpu_size)
        w.end_node()

    # The binding's order: secure physical, non-secure physical, virtual, hypervisor. With a
    # GICv2 the flags also carry the mask of CPUs the PPI reaches (GIC_CPU_MASK_SIMPLE).
    flags = IRQ_TYPE_LEVEL_HIGH | (((1 << min(len(spec.mpidrs), 8)) - 1) << 8)
    w.begin_node("timer")
    w.prop_str("compatible", "arm,armv8-timer")
    w.prop("always-on")
    t = spec.timers
    w.prop_u32("interrupts", *(c for intid in (t.secure, t.ptimer, t.vtimer, t.hyp)
                               for c in (GIC_PPI, intid - PPI_BASE, flags)))
    w.end_node()

    w.begin_node("apb-pclk")
    w.prop_u32("phandle", CLOCK_PHANDLE)
    w.prop_str("compatible", "fixed-clock")
    w.prop_u32("#clock-cells", 0)
    w.prop_u32("clock-frequency", APB_PCLK_HZ)
    w.prop_str("clock-output-names", "clk24mhz")
    w.end_node()

    w.begin_node(f"pl011@{lay.uart_base:x}")
    w.prop_str("compatible", "arm,pl011", "arm,primecell")
    w.prop_u64("reg", lay.uart_base, lay.uart_size)
    if spec.gic is not None:
        w.prop_u32("interrupts", GIC_SPI, spec.gic.uart_spi, IRQ_TYPE_LEVEL_HIGH)
    w.prop_u32("clocks", CLOCK_PHANDLE, CLOCK_PHANDLE)
    w.prop_str("clock-names", "uartclk", "apb_pclk")
    w.end_node()

    w.end_node()
    return w.finish()
