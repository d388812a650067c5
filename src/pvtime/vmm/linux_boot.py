"""Booting a Linux kernel in a machine, as a VMM's boot loader does (QEMU's hw/arm/boot.c, kvmtool's
arm/fdt.c): the Image, the initramfs and a device tree placed in guest RAM, and the boot vCPU's
registers set through KVM_SET_ONE_REG. The rules of placement are `arm64_image`'s; the tree is
`devicetree`'s, describing what the machine has (a GIC only with a vGIC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvtime.abi.uapi import REG_PC, reg_x
from pvtime.kvm import Vcpu
from pvtime.vmm.arm64_image import Arm64Image, BootLayout, ImageError, plan
from pvtime.vmm.devicetree import DeviceTreeSpec, virt_device_tree

@dataclass(frozen=True)
class LinuxBoot:
    """What to boot: the kernel Image (raw or gzipped), an initramfs, the command line."""

    kernel: bytes
    initrd: bytes | None = None
    bootargs: str = ""

    @classmethod
    def from_files(cls, kernel: Path | str, initrd: Path | str | None = None, bootargs: str = "") -> LinuxBoot:
        """Read the kernel and initramfs files (ImageError naming a file that cannot be read)."""
        def read(path: Path | str, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as err:
                raise ImageError(f"{what} {path}: {err.strerror or err}") from None
        return cls(read(kernel, "kernel"), None if initrd is None else read(initrd, "initramfs"), bootargs)


def load_linux(ram: memoryview, vcpus: list[Vcpu], boot: LinuxBoot,
               device_tree: Callable[[str, tuple[int, int] | None], DeviceTreeSpec]) -> BootLayout:
    """Place `boot` in `ram` and reset the vCPUs: vCPU 0 at the kernel's entry with x0 = the device
    tree, the others powered off for PSCI CPU_ON. `device_tree(bootargs, initrd)` says what the
    machine's tree describes (the VMM reads it through the KVM API once the vCPUs are reset).
    """
    image = Arm64Image.parse(boot.kernel)
    for vcpu in vcpus:
        vcpu.init(power_off=vcpu.id != 0)
    initrd = boot.initrd or b""
    spec = device_tree(boot.bootargs, None)
    layout = spec.layout
    # The tree's size does not depend on where the initramfs goes (its addresses are fixed-width).
    probe = virt_device_tree(dataclasses.replace(spec, initrd=(0, 0)))
    where = plan(image, layout.ram_base, len(ram), initrd_size=len(initrd), dtb_size=len(probe))
    dtb = virt_device_tree(dataclasses.replace(spec, initrd=where.initrd if boot.initrd is not None else None))
    base = layout.ram_base
    ram[where.kernel - base:where.kernel - base + len(image.data)] = image.data
    if where.initrd is not None:
        ram[where.initrd[0] - base:where.initrd[1] - base] = initrd
    ram[where.dtb - base:where.dtb - base + len(dtb)] = dtb
    boot_cpu = vcpus[0]
    boot_cpu.set_one_reg(REG_PC, where.entry)
    boot_cpu.set_one_reg(reg_x(0), where.dtb)
    for n in (1, 2, 3):  # booting.rst: x1-x3 are reserved and must be zero
        boot_cpu.set_one_reg(reg_x(n), 0)
    return where
