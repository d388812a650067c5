"""Model backend rates: SMCCC hypercall dispatch and stolen-time updates (vcpu_load), per second.

Run: ``python bench/bench_model.py [--n N] [--repeat R]``. Prints figures only.
"""

from __future__ import annotations

import argparse

from common import machine_line, rate

from pvtime.abi import smccc
from pvtime.cpu.backend import Conduit
from pvtime.cpu.model import GuestView
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args()

    host = Host()
    machine = Machine(Kvm(host), MachineConfig("bench", vcpus=1, memory_mib=1))
    vcpu, task = machine.vcpus[0], host.spawn("vcpu0")
    view = GuestView(vcpu)
    inputs = list(range(args.n))
    regs = [0, 0, 0, 0]

    def trap(fid: int, x1: int = 0) -> None:
        regs[0], regs[1] = fid, x1
        vcpu.hypercall(regs, Conduit.HVC, 0)

    with host.on_cpu(task):
        figures = {
            "SMCCC_VERSION (trap only)": rate(lambda _: trap(smccc.SMCCC_VERSION), inputs, args.repeat),
            "PV_TIME_FEATURES(ST) (trap only)": rate(lambda _: trap(smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST),
                                                     inputs, args.repeat),
            "PV_TIME_ST via guest HVC": rate(lambda _: view.hvc(smccc.PV_TIME_ST), inputs, args.repeat),
            "stolen-time update (vcpu_load)": rate(lambda _: vcpu._vcpu_load(task), inputs, args.repeat),
        }
    print(machine_line())
    for name, per_s in figures.items():
        print(f"{name:36s} {per_s / 1e6:7.3f} M/s  ({1e9 / per_s:7.0f} ns each)")


if __name__ == "__main__":
    main()
