"""The one place that wires a VM together: its machine and guest, and a host thread per vCPU.

As Firecracker's `builder`: `build_machine` makes the machine from its config and loads the
guest (an ELF or Linux image, or a model program); `start_vcpu_threads` gives each vCPU a
`VcpuThread`, spawns its host task and hands it to the scheduler (KVM wakes it through the host on PSCI
CPU_ON). Nothing else creates vCPU threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvtime.guest.machine import ModelProgram
from pvtime.host import Host, Scheduler, TaskBody
from pvtime.kvm import Kvm
from pvtime.vmm.linux_boot import LinuxBoot
from pvtime.vmm.machine import Machine, MachineConfig, VcpuThread

# Wraps a vCPU thread in the body the scheduler runs (an observer of its slices); default: the thread.
BodyFactory = Callable[[VcpuThread], TaskBody]


@dataclass(frozen=True)
class Placement:
    """Where a VM's vCPU threads may run: their nice value and CPU affinity.

    `pin` gives each vCPU one host CPU (by vCPU id); otherwise every thread may use `cpus`
    (None: all of the host's CPUs).
    """

    nice: int = 0
    cpus: Sequence[int] | None = None
    pin: Sequence[int] | None = None

    def cpus_of(self, vcpu_id: int) -> list[int] | None:
        """The CPUs vCPU `vcpu_id`'s thread may run on."""
        if self.pin is not None:
            return [self.pin[vcpu_id]]
        return None if self.cpus is None else list(self.cpus)


def build_machine(kvm: Kvm, config: MachineConfig, *, image: bytes | Path | str | None = None,
                  program: ModelProgram | None = None, linux: LinuxBoot | None = None,
                  console: Callable[[bytes], None] | None = None) -> Machine:
    """A machine of `config` on `kvm`, running the ELF `image`, the model `program` or a Linux kernel.

    An ELF or Linux guest starts with vCPU 0 at its entry; the others stay powered off until PSCI
    CPU_ON. A Linux guest needs the machine to have a vGIC (`config.vgic`). `console` also gets the
    guest's console output as it comes.
    """
    if sum(g is not None for g in (image, program, linux)) > 1:
        raise ValueError(f"{config.name}: a guest is one of an ELF image, a model program or a Linux kernel")
    if linux is not None and not config.vgic:
        raise ValueError(f"{config.name}: Linux needs an interrupt controller: configure the machine with a vGIC")
    machine = Machine(kvm, config)
    machine.console_sink = console
    if program is not None:
        machine.load_model_guest(program)
    elif image is not None:
        machine.load_elf(image)
    elif linux is not None:
        machine.load_linux(linux)
    return machine


def start_vcpu_threads(machine: Machine, host: Host, sched: Scheduler, *, start_ns: int | None = None,
                       placement: Placement | None = None, body: BodyFactory | None = None,
                       ) -> list[VcpuThread]:
    """Spawn a thread per vCPU of `machine` on `host`, runnable on `sched` from `start_ns`.

    Each thread's task is `<vm>/vcpu<id>`; the threads are returned in vCPU id order.
    """
    placement = placement or Placement()
    threads = []
    for vcpu in machine.vcpus:
        thread = VcpuThread(machine, vcpu)
        task = host.spawn(f"{machine.config.name}/vcpu{vcpu.id}")
        thread.task = task
        sched.add(task, thread if body is None else body(thread), nice=placement.nice,
                  cpus=placement.cpus_of(vcpu.id), start_ns=start_ns)
        threads.append(thread)
    return threads
