"""A bare test rig: one host, one unicorn VM with RAM at the QEMU-virt base, code placed in it."""

from __future__ import annotations

from functools import partial

from pvtime.abi.uapi import REG_PC
from pvtime.cpu import CpuBackend, CpuFactory, create_cpu
from pvtime.host import Host, Task
from pvtime.kvm import Exit, Kvm, Vcpu, Vm

RAM_BASE = 0x4000_0000


class Rig:
    """`code` at RAM_BASE; vCPU 0 starts there, the others powered off; one host task per vCPU.

    The vCPUs run on unicorn CPUs (or those `cpu` makes), which the rig keeps in `cpus`.
    """

    def __init__(self, code: bytes, *, vcpus: int = 1, ram_size: int = 1 << 20, counter_hz: int = 25_000_000,
                 instructions_per_sec: int | None = None, name: str = "t", host: Host | None = None,
                 cpu: CpuFactory | None = None) -> None:
        self.host = host or Host(counter_hz)
        self.kvm = Kvm(self.host)
        make = cpu or partial(create_cpu, "unicorn", instructions_per_sec=instructions_per_sec)
        self.cpus: list[CpuBackend] = [make(i) for i in range(vcpus)]
        self.vm: Vm = self.kvm.create_vm(name, cpu=self.cpus.__getitem__)
        self.ram = bytearray(ram_size)
        self.ram[:len(code)] = code
        self.vm.set_user_memory_region(0, RAM_BASE, ram_size, self.ram)
        self.vcpus: list[Vcpu] = []
        self.tasks: list[Task] = []
        for i in range(vcpus):
            vcpu = self.vm.create_vcpu(i)
            vcpu.init(power_off=i > 0)
            self.vcpus.append(vcpu)
            self.tasks.append(self.host.spawn(f"{name}-vcpu{i}"))
        self.vcpus[0].set_one_reg(REG_PC, RAM_BASE)

    def run(self, i: int = 0, budget_ns: int = 10_000_000) -> Exit:
        """One KVM_RUN of vCPU `i` on its task, with a slice of `budget_ns`."""
        with self.host.on_cpu(self.tasks[i], budget_ns):
            return self.vcpus[i].run()
