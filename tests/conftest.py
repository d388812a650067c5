"""Shared fixtures: a host with one VM whose vCPUs have PV time configured the way QEMU does it.

Guest code of a test's own runs as a real guest's does: inside KVM_RUN, after KVM has loaded the
vCPU (`Env.guest`). The vCPUs' engines are `ScriptCpu`s, model CPUs that execute a queued Python
function as the guest code of their next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pvtime.cpu.backend import Clock, Conduit, Stop, StopKind, VcpuTraps
from pvtime.cpu.model import GuestView, ModelCpu
from pvtime.host import Host, Task
from pvtime.kvm import Exit, Kvm, Vcpu, Vm
from pvtime.vmm import Machine, MachineConfig


class _NotRunning:
    """The traps of a vCPU that is not in KVM_RUN: guest code cannot execute there."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("guest code runs only inside KVM_RUN (Env.guest)")


NOT_RUNNING: Any = _NotRunning()


class ScriptCpu(ModelCpu):
    """A model CPU that runs a test's guest code: each function in `script` is the guest code of
    one KVM_RUN (then the vCPU exits to the VMM); with none queued, the model program runs.

    `view` is the vCPU as its guest code sees it (`GuestView`), and `traps` what the CPU traps
    to (the hypervisor's `VcpuTraps`, as a CPU backend calls them); both usable while that code
    runs.
    """

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.traps: VcpuTraps = NOT_RUNNING
        self.view = GuestView(NOT_RUNNING)
        self.script: list[Callable[[], object]] = []
        self.result: object = None

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        if not self.script:
            return super().execute(traps, clock)
        code = self.script.pop(0)
        self.traps = traps
        self.view.retarget(traps)
        try:
            self.result = code()
        finally:
            self.traps = NOT_RUNNING
            self.view.retarget(NOT_RUNNING)
        return Stop(StopKind.EXIT)


def run_guest_code(host: Host, task: Task, vcpu: Vcpu, cpu: ScriptCpu, code: Callable[[], object], *,
                   budget_ns: int = 0, start_ns: int | None = None) -> tuple[Exit, object]:
    """One KVM_RUN of `vcpu` on `task` that executes `code` as its guest code: the exit, code's result."""
    cpu.script.append(code)
    with host.on_cpu(task, budget_ns, start_ns=start_ns):
        ex = vcpu.run()
    if cpu.script:
        cpu.script.clear()
        raise AssertionError(f"{vcpu} did not enter the guest: {ex}")
    return ex, cpu.result


@dataclass
class Env:
    """A host, its KVM, one machine, and a host task per vCPU."""

    host: Host
    kvm: Kvm
    machine: Machine
    tasks: list[Task]
    exits: list[Exit] = field(default_factory=list)  # what each KVM_RUN of `guest` returned

    @property
    def vm(self) -> Vm:
        return self.machine.vm

    def vcpu(self, i: int = 0) -> Vcpu:
        return self.machine.vcpus[i]

    def cpu(self, i: int = 0) -> ScriptCpu:
        cpu = self.machine.cpus[i]
        assert isinstance(cpu, ScriptCpu)
        return cpu

    def guest(self, i: int, code: Callable[[], object], *, task: Task | None = None) -> Any:
        """Run `code` as vCPU i's guest code, in one KVM_RUN on its thread (or `task`); its result."""
        ex, result = run_guest_code(self.host, task or self.tasks[i], self.vcpu(i), self.cpu(i), code)
        self.exits.append(ex)
        return result

    def load(self, i: int = 0, task: Task | None = None) -> None:
        """A KVM_RUN whose guest code does nothing: the vcpu_load and its stolen-time update."""
        self.guest(i, lambda: None, task=task)

    def call(self, i: int, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *,
             conduit: Conduit = Conduit.HVC, imm: int = 0) -> list[int]:
        """Make vCPU i's guest code make an SMCCC call; x0..x3 after."""
        view = self.cpu(i).view
        insn = view.smc if conduit is Conduit.SMC else view.hvc
        return list(self.guest(i, lambda: insn(x0, x1, x2, x3, imm=imm)))


def make_env(vcpus: int = 1, *, pvtime: bool = True, counter_hz: int = 25_000_000) -> Env:
    host = Host(counter_hz)
    kvm = Kvm(host)
    machine = Machine(kvm, MachineConfig("t", vcpus=vcpus, memory_mib=2, pvtime=pvtime), cpus=ScriptCpu)
    return Env(host, kvm, machine, [host.spawn(f"vcpu{i}") for i in range(vcpus)])


@pytest.fixture
def env() -> Env:
    return make_env(2)


class RecordingCpu:
    """A vCPU as its guest sees it (inside `Env.guest`), recording every hypercall function id
    (for probe-order tests)."""

    def __init__(self, env: Env, i: int) -> None:
        self._view = env.cpu(i).view
        self.calls: list[int] = []

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0):
        self.calls.append(x0)
        return self._view.hvc(x0, x1, x2, x3, imm=imm)

    def __getattr__(self, name: str):
        return getattr(self._view, name)
