"""Booting Linux as a VMM does: what lands in guest RAM and in the boot vCPU's registers
(Documentation/arch/arm64/booting.rst), and the device tree describing the machine."""

import struct

import fdt
import pytest

from pvtime.abi.uapi import KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED, REG_PC, reg_x
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import MachineConfig
from pvtime.vmm.arm64_image import ImageError
from pvtime.vmm.builder import build_machine
from pvtime.vmm.linux_boot import LinuxBoot
from pvtime.vmm.machine import Machine

RAM = 0x4000_0000


def kernel(image_size=0x20_0000):
    head = struct.pack("<IIQQQQQQII", 0x14000000, 0, 0, image_size, 0b1010, 0, 0, 0, 0x644D5241, 0)
    return head + b"KERNEL" + bytes(100)


def boot(vgic=True, vcpus=2, initrd=b"INITRAMFS" * 10, bootargs="console=ttyAMA0 quiet"):
    config = MachineConfig("linux", vcpus=vcpus, memory_mib=64, vgic=vgic)
    return build_machine(Kvm(Host()), config, linux=LinuxBoot(kernel(), initrd, bootargs))


def test_kernel_initrd_and_dtb_in_ram_and_x0_points_at_the_tree():
    m = boot()
    pc, x0 = m.vcpus[0].get_one_reg(REG_PC), m.vcpus[0].get_one_reg(reg_x(0))
    assert pc == RAM and m.read_guest(pc + 64, 6) == b"KERNEL"
    assert [m.vcpus[0].get_one_reg(reg_x(n)) for n in (1, 2, 3)] == [0, 0, 0]
    tree = fdt.parse_dtb(m.read_guest(x0, 4096))
    chosen = tree.get_node("/chosen")
    start = chosen.get_property("linux,initrd-start").data
    end = chosen.get_property("linux,initrd-end").data
    lo, hi = start[0] << 32 | start[1], end[0] << 32 | end[1]
    assert m.read_guest(lo, hi - lo) == b"INITRAMFS" * 10
    assert chosen.get_property("bootargs").value == "console=ttyAMA0 quiet"
    assert lo >= RAM + 0x20_0000  # above the kernel's image_size
    assert x0 % (2 << 20) == 0 and x0 >= hi


def test_the_boot_cpu_runs_and_the_others_wait_for_psci_cpu_on():
    m = boot(vcpus=3)
    assert [v.get_mp_state() for v in m.vcpus] == [KVM_MP_STATE_RUNNABLE] + [KVM_MP_STATE_STOPPED] * 2


def test_the_tree_has_a_gic_and_cpu_nodes_by_mpidr_only_as_the_machine_has_them():
    with_gic = fdt.parse_dtb(boot().read_guest(boot().vcpus[0].get_one_reg(reg_x(0)), 4096))
    assert with_gic.exist_node("/intc@8000000")
    assert [n.name for n in with_gic.get_node("/cpus").nodes] == ["cpu@0", "cpu@1"]
    timer = list(with_gic.get_node("/timer").get_property("interrupts").data)
    assert timer[7] == 27 - 16  # the virtual timer's PPI, as KVM_ARM_VCPU_TIMER_IRQ_VTIMER reads it
    m = Machine(Kvm(Host()), MachineConfig("plain", vcpus=1, memory_mib=64))  # a VMM may still load it
    m.load_linux(LinuxBoot(kernel()))
    without = fdt.parse_dtb(m.read_guest(m.vcpus[0].get_one_reg(reg_x(0)), 4096))
    assert not without.exist_node("/intc@8000000")


def test_linux_without_a_vgic_or_with_more_vcpus_than_a_gicv2_serves_is_refused():
    with pytest.raises(ValueError, match="needs an interrupt controller"):
        build_machine(Kvm(Host()), MachineConfig("l", vgic=False), linux=LinuxBoot(kernel()))
    with pytest.raises(ValueError, match="at most 8 vCPUs"):
        MachineConfig("l", vcpus=9, vgic=True).validate()


def test_a_kernel_that_is_not_an_image_names_the_problem(tmp_path):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(ImageError, match="not an arm64 Image"):
        build_machine(Kvm(Host()), MachineConfig("l", vgic=True), linux=LinuxBoot.from_files(bad))
    with pytest.raises(ImageError, match="kernel .*missing"):
        LinuxBoot.from_files(tmp_path / "missing")
