"""Model backend rates: SMCCC hypercall dispatch and stolen-time updates (vcpu_load), per second.

Run: ``python bench/bench_model.py [--n N] [--repeat R]``. Prints figures only.

The calls are made as guest code makes them: from inside one KVM_RUN, on the traps the vCPU's
CPU backend is given. The vcpu_load figure is a whole KVM_RUN whose guest code does nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from common import machine_line, rate

from pvtime.abi import smccc
from pvtime.cpu.backend import Clock, Conduit, Stop, StopKind, VcpuTraps
from pvtime.cpu.model import GuestView, ModelCpu
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig


class BenchCpu(ModelCpu):
    """A model CPU whose guest code is `code(traps)`, run at each KVM_RUN (then it exits)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.code: Callable[[VcpuTraps], None] = lambda traps: None

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        self.code(traps)
        return Stop(StopKind.EXIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args()

    host = Host()
    machine = Machine(Kvm(host), MachineConfig("bench", vcpus=1, memory_mib=1), cpus=BenchCpu)
    vcpu, cpu, task = machine.vcpus[0], machine.cpus[0], host.spawn("vcpu0")
    assert isinstance(cpu, BenchCpu)
    inputs = list(range(args.n))
    regs = [0, 0, 0, 0]
    figures: dict[str, float] = {}

    def guest_figures(traps: VcpuTraps) -> None:
        view = GuestView(traps)

        def trap(fid: int, x1: int = 0) -> None:
            regs[0], regs[1] = fid, x1
            traps.hypercall(regs, Conduit.HVC, 0)

        figures.update({
            "SMCCC_VERSION (trap only)": rate(lambda _: trap(smccc.SMCCC_VERSION), inputs, args.repeat),
            "PV_TIME_FEATURES(ST) (trap only)": rate(lambda _: trap(smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST),
                                                     inputs, args.repeat),
            "PV_TIME_ST via guest HVC": rate(lambda _: view.hvc(smccc.PV_TIME_ST), inputs, args.repeat),
        })

    with host.on_cpu(task):
        cpu.code = guest_figures
        vcpu.run()
        cpu.code = lambda traps: None
        figures["stolen-time update (a KVM_RUN)"] = rate(lambda _: vcpu.run(), inputs, args.repeat)
    print(machine_line())
    for name, per_s in figures.items():
        print(f"{name:36s} {per_s / 1e6:7.3f} M/s  ({1e9 / per_s:7.0f} ns each)")


if __name__ == "__main__":
    main()
