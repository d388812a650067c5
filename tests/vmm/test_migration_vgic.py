"""A VM with a vGIC migrates with its interrupt controller's state and its UART's interrupt
state (the registers a VMM saves through KVM_DEV_ARM_VGIC_GRP_DIST_REGS / _CPU_REGS)."""

import json

import pytest

from pvtime.abi.gic import GICD_CTLR, GICD_ISENABLER, GICD_ISPENDR
from pvtime.abi.uapi import KVM_ARM_IRQ_TYPE_SPI, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, kvm_arm_irq, vgic_reg_attr
from pvtime.host import Host
from pvtime.kvm import Kvm, MmioExit
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm import gic_state
from pvtime.vmm.migration import MigrationError, restore, save
from pvtime.vmm.migration_stream import decode, encode

DIST = KVM_DEV_ARM_VGIC_GRP_DIST_REGS
UART = 0x0900_0000


def machine_with_state():
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("g", vcpus=2, memory_mib=1, vgic=True))
    gic = m.gic
    gic.set_device_attr(DIST, vgic_reg_attr(0, GICD_CTLR), 1)
    gic.set_device_attr(DIST, vgic_reg_attr(0, GICD_ISENABLER + 4), 0b11 << 8)  # SPIs 40, 41
    m.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 40), 1)
    m.uart.access(MmioExit(UART + 0x38, 4, (0x20).to_bytes(4, "little"), True))  # IMSC.TXIM
    m.uart.access(MmioExit(UART, 4, b"A\0\0\0", True))  # raises the UART's SPI (33)
    return m


def test_vgic_and_uart_state_arrive_intact():
    src = machine_with_state()
    dst = restore(Kvm(Host(25_000_000)), save(src, now_ns=0), now_ns=0)
    assert dst.gic is not None
    assert gic_state.save(dst.gic, [0, 1]) == gic_state.save(src.gic, [0, 1])
    pending = dst.gic.get_device_attr(DIST, vgic_reg_attr(0, GICD_ISPENDR + 4))
    assert pending & (1 << 1) and pending & (1 << 8)  # SPI 33 (the UART) and SPI 40
    assert dst.uart.save_state() == src.uart.save_state()


def test_a_vm_without_a_vgic_carries_no_vgic_state():
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("p", memory_mib=1))
    part = decode(save(m, now_ns=0))
    assert "vgic" not in part.meta["config"] and "vgic" not in part.state


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.state.pop("vgic"), "vGIC state and its config.vgic disagree"),
    (lambda p: p.state["vgic"].append([1, 7, 0, 0]), r"vgic\[\d+\]\[1\]: 7 is outside 0..1"),
    (lambda p: p.state["vgic"].append("x"), "expected \\[group, vCPU, offset, value\\]"),
    (lambda p: p.state["uart"]["regs"].update({"0x99": 1}), "PL011 register 0x99"),
    (lambda p: p.meta["config"].update({"vcpus": 9}), "9 vCPUs with a GICv2"),
])
def test_a_damaged_vgic_state_is_refused_naming_the_field(damage, message):
    part = decode(save(machine_with_state(), now_ns=0))
    part = decode(encode(part))  # a fresh copy to damage
    damage(part)
    kvm = Kvm(Host(25_000_000))
    with pytest.raises(MigrationError, match=message):
        restore(kvm, encode(part), now_ns=0)
    assert json.dumps(part.meta)  # still a JSON document: the refusal came from checking it


def test_a_machine_code_vm_without_a_vgic_carries_its_uart_state():
    """The PL011's registers are the VMM's device state with or without an interrupt controller:
    a guest that enabled its TX interrupt finds it enabled after the migration, and the DR zone
    is coalesced only while that interrupt is masked, on both hosts alike."""
    from pvtime.cpu import CpuKind

    src = Machine(Kvm(Host(25_000_000)), MachineConfig("e", memory_mib=1, cpu=CpuKind.UNICORN))
    assert src.gic is None and src.coalesced is not None and src.coalesced.registered
    src.uart.access(MmioExit(UART + 0x38, 4, (0x20).to_bytes(4, "little"), True))  # IMSC.TXIM
    src.coalesced.sync()
    assert not src.coalesced.registered
    dst = restore(Kvm(Host(25_000_000)), save(src, now_ns=0), now_ns=0)
    assert dst.uart.save_state() == src.uart.save_state() and dst.uart.mask == 0x20
    assert dst.coalesced is not None and not dst.coalesced.registered


def test_a_model_vm_without_a_vgic_carries_no_uart_state():
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("p", memory_mib=1))
    assert "uart" not in decode(save(m, now_ns=0)).state
