"""Set-up shared by the vGIC tests (no tests here): a VM of ScriptCpu vCPUs with a vGICv2 where
QEMU's virt machine puts it, and guest-side register access through the vCPU's `GuestView`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pvtime.abi.uapi import (
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_TYPE_ARM_VGIC_V2, KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST,
)
from pvtime.cpu.model import GuestView
from pvtime.host import Host, Task
from pvtime.kvm import Exit, Kvm, KvmError, Vcpu, Vm
from pvtime.kvm.vgic import VgicV2Device
from tests.conftest import ScriptCpu, run_guest_code

DIST = 0x0800_0000  # QEMU virt: GIC distributor
CPUIF = 0x0801_0000  # QEMU virt: GIC CPU interface
RAM = 0x4000_0000


class Gic:
    """The vGIC's registers as guest code on one vCPU reaches them (32-bit loads and stores)."""

    def __init__(self, view: GuestView) -> None:
        self.view = view

    def dist(self, offset: int, value: int | None = None) -> int:
        """Read (value None) or write a distributor register."""
        return self._access(DIST + offset, value)

    def cpu(self, offset: int, value: int | None = None) -> int:
        """Read (value None) or write a CPU-interface register."""
        return self._access(CPUIF + offset, value)

    def _access(self, addr: int, value: int | None) -> int:
        if value is None:
            return int.from_bytes(self.view.mmio_read(addr, 4), "little")
        self.view.mmio_write(addr, value.to_bytes(4, "little"))
        return 0


@dataclass
class GicVm:
    """A host, a VM with `n` vCPUs on ScriptCpus, its vGIC device, and a host task per vCPU."""

    host: Host
    kvm: Kvm
    vm: Vm
    vcpus: list[Vcpu]
    cpus: list[ScriptCpu]
    tasks: list[Task]
    gic: VgicV2Device | None
    woken: list[Task] = field(default_factory=list)  # the tasks KVM woke (Host.wake)
    exits: list[Exit] = field(default_factory=list)

    def guest(self, i: int, code: Callable[[Gic], Any]) -> Any:
        """Run `code(Gic)` as vCPU i's guest code in one KVM_RUN on its task; its result."""
        cpu = self.cpus[i]
        try:
            ex, result = run_guest_code(self.host, self.tasks[i], self.vcpus[i], cpu, lambda: code(Gic(cpu.view)))
        except KvmError:
            cpu.script.clear()  # KVM_RUN failed before entering the guest: the code never ran
            raise
        self.exits.append(ex)
        return result

    def run(self, i: int, budget_ns: int | None = None) -> Exit:
        """One KVM_RUN of vCPU i executing its loaded model program."""
        with self.host.on_cpu(self.tasks[i], budget_ns):
            ex = self.vcpus[i].run()
        self.exits.append(ex)
        return ex


def make_vm(n: int = 2, *, gic: bool = True, place: bool = True, counter_hz: int = 25_000_000) -> GicVm:
    """A VM of `n` vCPUs with 64 KiB of RAM; with `gic` a vGICv2, with `place` at DIST/CPUIF."""
    host = Host(counter_hz)
    kvm = Kvm(host)
    made: dict[int, ScriptCpu] = {}
    vm = kvm.create_vm(cpu=lambda i: made.setdefault(i, ScriptCpu(i)))
    vm.set_user_memory_region(0, RAM, 0x10000, bytearray(0x10000))
    vcpus = [vm.create_vcpu(i) for i in range(n)]
    device = vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2) if gic else None
    if device is not None and place:
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, CPUIF)
    env = GicVm(host, kvm, vm, vcpus, [made[i] for i in range(n)], [host.spawn(f"vcpu{i}") for i in range(n)],
                device)
    host.set_waker(env.woken.append)
    return env


def errno_of(fn: Callable[..., object], *args: object) -> int:
    """The errno the KVM call fails with."""
    with pytest.raises(KvmError) as err:
        fn(*args)
    return err.value.errno
