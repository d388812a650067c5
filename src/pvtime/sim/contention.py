"""A small end-to-end run: one host CPU shared round-robin by a model-guest VM and CPU hogs.

This is the first `pvtime run`: real host tasks, the KVM model, the VMM and the model Linux
guest, with steal produced by contention and compared as the host and the guest see it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pvtime.abi.records import STEAL_TIME_OFFSET
from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.host import CpuHog, Host, Step, Task, TaskBody, TaskState
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig, VcpuThread


@dataclass(frozen=True)
class VcpuSteal:
    """One vCPU's steal as each side sees it, at the end of the run."""

    vcpu: int
    host_run_delay_ns: int  # run_delay growth of the vCPU thread since PV_TIME_ST
    record_steal_ns: int  # the record's stolen_time
    guest_steal_ns: int  # cpustat[STEAL] of the guest
    proc_stat_steal: int  # the guest's /proc/stat steal, USER_HZ
    duration_ns: int

    @property
    def steal_pct(self) -> float:
        """Guest-reported steal as a share of the run."""
        return 100.0 * self.guest_steal_ns / self.duration_ns if self.duration_ns else 0.0


@dataclass(frozen=True)
class ContentionResult:
    """The run's per-vCPU steal and the guest's /proc/stat."""

    vcpus: list[VcpuSteal]
    proc_stat: str


def run_contention(duration_ns: int = 1_000_000_000, *, vcpus: int = 1, hogs: int = 1,
                   slice_ns: int = 3_000_000, counter_hz: int = 25_000_000, seed: int = 0) -> ContentionResult:
    """Run a VM of `vcpus` model-guest vCPUs against `hogs` CPU hogs on one host CPU."""
    host = Host(counter_hz, ncpus=1)
    machine = Machine(Kvm(host), MachineConfig("vm0", vcpus=vcpus))
    kernel = ModelKernel(KernelOptions(workload=Workload(busy_ns=(1_000_000, 8_000_000),
                                                         idle_ns=(0, 6_000_000), seed=seed)))
    machine.load_model_guest(kernel)
    bodies: list[tuple[Task, TaskBody]] = []
    threads = []
    for vcpu in machine.vcpus:
        thread = VcpuThread(machine, vcpu)
        thread.task = host.spawn(f"vcpu{vcpu.id}")
        threads.append(thread)
        bodies.append((thread.task, thread))
    for i in range(hogs):
        bodies.append((host.spawn(f"hog{i}"), CpuHog()))
    _round_robin(host, bodies, duration_ns, slice_ns)
    rows = []
    for thread in threads:
        assert thread.task is not None
        vcpu = thread.vcpu
        record = struct.unpack("<Q", machine.vm.memory.read(vcpu.steal.base + STEAL_TIME_OFFSET, 8) or bytes(8))[0]
        guest = kernel.ticks.stat(vcpu.id).steal
        rows.append(VcpuSteal(vcpu.id, thread.task.run_delay_ns - (thread.first_run_delay_ns or 0),
                              record, guest, guest // 10_000_000, duration_ns))
    return ContentionResult(rows, kernel.proc_stat())


def _round_robin(host: Host, bodies: list[tuple[Task, TaskBody]], duration_ns: int, slice_ns: int) -> None:
    """One CPU, FIFO run queue, fixed slices; sleepers wake at their requested time."""
    queue: list[tuple[Task, TaskBody]] = []
    sleeping: dict[int, tuple[int | None, Task, TaskBody]] = {}
    for task, body in bodies:
        task.enqueue(host.clock_ns)
        queue.append((task, body))
    while host.clock_ns < duration_ns:
        for tid, (wake, task, body) in sorted(sleeping.items(), key=lambda kv: (kv[1][0] or 0, kv[0])):
            if wake is not None and wake <= host.clock_ns:
                del sleeping[tid]
                task.enqueue(host.clock_ns)
                queue.append((task, body))
        if not queue:
            wakes = [w for w, _, _ in sleeping.values() if w is not None]
            if not wakes:
                break
            host.idle(min(wakes) - host.clock_ns)
            continue
        task, body = queue.pop(0)
        budget = min(slice_ns, duration_ns - host.clock_ns)
        with host.on_cpu(task, budget) as slice_:
            step: Step = body.step(slice_)
            if step.state is not TaskState.QUEUED:
                task.depart(slice_.now_ns, runnable=False)
        if step.state is TaskState.QUEUED:
            queue.append((task, body))
        elif step.state is TaskState.SLEEPING:
            sleeping[task.tid] = (step.wake_at_ns, task, body)
        else:
            task.exit(host.clock_ns)
