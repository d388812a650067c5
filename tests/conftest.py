"""Shared fixtures: a host with one VM whose vCPUs have PV time configured the way QEMU does it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pvtime.cpu.backend import Conduit
from pvtime.host import Host, Task
from pvtime.kvm import Kvm, Vcpu, Vm
from pvtime.vmm import Machine, MachineConfig


@dataclass
class Env:
    """A host, its KVM, one machine, and a host task per vCPU."""

    host: Host
    kvm: Kvm
    machine: Machine
    tasks: list[Task]

    @property
    def vm(self) -> Vm:
        return self.machine.vm

    def vcpu(self, i: int = 0) -> Vcpu:
        return self.machine.vcpus[i]

    def call(self, i: int, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *,
             conduit: Conduit = Conduit.HVC, imm: int = 0) -> list[int]:
        """Make vCPU i trap an SMCCC call while its thread is on a CPU; x0..x3 after."""
        regs = [x0, x1, x2, x3]
        with self.host.on_cpu(self.tasks[i], 0):
            self.vcpu(i).hypercall(regs, conduit, imm)
        return regs


def make_env(vcpus: int = 1, *, pvtime: bool = True, counter_hz: int = 25_000_000) -> Env:
    host = Host(counter_hz)
    kvm = Kvm(host)
    machine = Machine(kvm, MachineConfig("t", vcpus=vcpus, memory_mib=2, pvtime=pvtime))
    return Env(host, kvm, machine, [host.spawn(f"vcpu{i}") for i in range(vcpus)])


@pytest.fixture
def env() -> Env:
    return make_env(2)


class RecordingCpu:
    """A vCPU as its guest sees it, recording every hypercall function id (for probe-order tests)."""

    def __init__(self, env: Env, i: int) -> None:
        from pvtime.cpu.model import GuestView

        self._view = GuestView(env.vcpu(i))
        self.calls: list[int] = []

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0):
        self.calls.append(x0)
        return self._view.hvc(x0, x1, x2, x3, imm=imm)

    def __getattr__(self, name: str):
        return getattr(self._view, name)
