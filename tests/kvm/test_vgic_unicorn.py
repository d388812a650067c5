"""The vGIC under AArch64 machine code (the unicorn backend): the guest's loads and stores to the
distributor and CPU interface complete inside KVM_RUN (io_mem_abort -> kvm_io_bus), never as an
MMIO exit, and the virtual timer's PPI wakes a WFI and is acknowledged through GICC_IAR."""

from __future__ import annotations

from pvtime.abi.uapi import (
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_TYPE_ARM_VGIC_V2, KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, reg_x,
)
from pvtime.kvm import HaltExit
from tests.cpu.asm import assemble
from tests.cpu.rig import Rig
from tests.kvm.test_vgic_env import CPUIF, DIST

PROGRAM = f"""
    movz x1, #{DIST >> 16:#x}, lsl #16
    movz x2, #{CPUIF >> 16:#x}, lsl #16
    ldr w3, [x1, #4]            // GICD_TYPER
    mov w4, #1
    str w4, [x1]                // GICD_CTLR: enable
    str w4, [x2]                // GICC_CTLR: enable Group 0
    mov w4, #0xf0
    str w4, [x2, #4]            // GICC_PMR
    mov w4, #(1 << 27)
    str w4, [x1, #0x100]        // GICD_ISENABLER0: the virtual timer's PPI
    mrs x5, cntvct_el0
    add x5, x5, #100
    msr cntv_cval_el0, x5
    mov x6, #1
    msr cntv_ctl_el0, x6        // the timer fires in 100 ticks
    wfi                         // IRQs stay masked: the interrupt only ends the wait
    ldr w7, [x2, #0xc]          // GICC_IAR
    msr cntv_ctl_el0, xzr       // quiet the timer
    str w7, [x2, #0x10]         // GICC_EOIR
    ldr w8, [x2, #0x14]         // GICC_RPR: idle again
    wfi
"""


def test_machine_code_programs_the_vgic_and_takes_the_timer_ppi_without_exits():
    rig = Rig(assemble(PROGRAM))
    gic = rig.vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2)
    assert gic is not None
    gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)
    gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, CPUIF)
    vcpu = rig.vcpus[0]
    first = rig.run()
    assert isinstance(first, HaltExit) and first.wake_at_ns is not None  # parked until the timer fires
    assert vcpu.get_one_reg(reg_x(3)) == 7  # 256 interrupts, one CPU
    rig.host.idle(first.wake_at_ns - rig.host.clock_ns)
    assert rig.run() == HaltExit(None)
    assert vcpu.get_one_reg(reg_x(7)) == 27
    assert vcpu.get_one_reg(reg_x(8)) == 0xFF
