"""Migration downtime in virtual time, and what a migration costs in wall time.

Run: ``python bench/bench_migration.py [--memory-mib M] [--dirty-mib D] [--repeat R]``.
A model-kernel VM with LPT (1 GHz PV) on a 25 MHz host is live-migrated to a 1 GHz host over a
10 Gbit/s link while a guest-side writer dirties D MiB per pre-copy round; printed: pre-copy
rounds, bytes, the downtime the guest sees (virtual time: last guest instruction on the source to
the restore on the destination), and the wall time of the save/restore steps. Then a unicorn VM
(the minikernel, AArch64 code, 3 vCPUs on one host CPU, LPT) migrated 25 MHz -> 1 GHz mid-run
with its pre-copy driven by the dirty log, and what dirty logging costs the guest (wall time of
the same virtual run with KVM_GET_DIRTY_LOG every 2 ms, against none). The conversion rate of
the LPT arithmetic itself is bench/bench_fixedpoint.py. Wall clock is used here only.
"""

from __future__ import annotations

import argparse
import time

from common import machine_line

from pvtime.cpu import CpuKind
from pvtime.cpu.backend import Clock, Stop, VcpuTraps
from pvtime.cpu.model import ModelCpu
from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.host import EventLoop, Host, Scheduler
from pvtime.kvm import Kvm
from pvtime.sim.migration import LinkSpec, MigrationDriver
from pvtime.vmm.builder import start_vcpu_threads
from pvtime.vmm import Machine, MachineConfig
from pvtime.abi.uapi import KVM_MEM_LOG_DIRTY_PAGES
from pvtime.vmm.images import packaged_image, patch_minikernel
from pvtime.vmm.migration import ModelHandover, restore, save

MS = 1_000_000


class StepClock:
    """Runs each migration step and adds up its wall-clock cost (the driver itself reads no clock)."""

    def __init__(self) -> None:
        self.wall_s = 0.0

    def __call__(self, step):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return step()
        finally:
            self.wall_s += time.perf_counter() - t0


class StoringCpu(ModelCpu):
    """A model CPU whose guest also stores `pending` at `addr` when it next runs: the dirtying
    workload (guest stores go through KVM, which logs them)."""

    def __init__(self, index: int, addr: int) -> None:
        super().__init__(index)
        self.addr = addr
        self.pending = b""

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        if self.pending:
            traps.write_memory(self.addr, self.pending)
            self.pending = b""
        return super().execute(traps, clock)


def live(memory_mib: int, dirty_mib: int) -> tuple[MigrationDriver, StepClock]:
    core = EventLoop()
    hosts = [Host(25_000_000, name="a"), Host(1_000_000_000, name="b")]
    scheds = [Scheduler(h, core) for h in hosts]
    kvms = [Kvm(h) for h in hosts]
    config = MachineConfig("vm", vcpus=2, memory_mib=memory_mib, lpt_pv_hz=10**9)
    m = Machine(kvms[0], config, cpus=lambda i: StoringCpu(i, config.layout.ram_base))
    m.ram[: memory_mib << 19] = bytes(range(256)) * (memory_mib << 11)  # half of RAM in use
    m.load_model_guest(ModelKernel(KernelOptions(workload=Workload(busy_ns=(1 * MS, 3 * MS)))))
    threads = start_vcpu_threads(m, hosts[0], scheds[0])
    drv = MigrationDriver(core, m, threads, scheds[0], kvms[1],
                          lambda mm, now: start_vcpu_threads(mm, hosts[1], scheds[1], start_ns=now),
                          at_ns=50 * MS, link=LinkSpec(), timed=(steps := StepClock()))
    dirty = dirty_mib << 20
    stamp = [0]

    def writer() -> None:  # guest stores between rounds, made by vCPU 0 when it next runs
        stamp[0] += 1
        cpu = m.cpus[0]
        assert isinstance(cpu, StoringCpu)
        cpu.pending = bytes([stamp[0] & 0xFF]) * dirty
        if drv.result is None and drv.error is None and m.stopped is None:
            core.at(core.now + 2 * MS, 1, writer)

    core.at(50 * MS, 1, writer)
    core.run(400 * MS)
    return drv, steps


def _minikernel_vm(kvm: Kvm) -> Machine:
    image = patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=200, busy_ms=15, idle_ms=10)
    m = Machine(kvm, MachineConfig("vm", vcpus=3, memory_mib=16, cpu=CpuKind.UNICORN,
                                   instructions_per_sec=100_000_000, lpt_pv_hz=10**9))
    m.load_elf(image)
    return m


def unicorn_live() -> tuple[MigrationDriver, Machine, StepClock, float]:
    """The minikernel migrated 25 MHz -> 1 GHz at 80 ms; runs to its exit."""
    core = EventLoop()
    hosts = [Host(25_000_000, name="a"), Host(1_000_000_000, name="b")]
    scheds = [Scheduler(h, core) for h in hosts]
    kvms = [Kvm(h) for h in hosts]
    m = _minikernel_vm(kvms[0])
    threads = start_vcpu_threads(m, hosts[0], scheds[0])
    drv = MigrationDriver(core, m, threads, scheds[0], kvms[1],
                          lambda mm, now: start_vcpu_threads(mm, hosts[1], scheds[1], start_ns=now),
                          at_ns=80 * MS, link=LinkSpec(max_rounds=3, converge_pages=0), timed=(steps := StepClock()))
    t0 = time.perf_counter()
    t = 0
    while (drv.result or m).stopped is None and t < 2000 * MS:
        t += 10 * MS
        core.run(t)
    return drv, drv.result or m, steps, time.perf_counter() - t0


def unicorn_logging_cost(log: bool) -> tuple[float, int]:
    """Wall time of the minikernel's whole run with the dirty log read every 2 ms (or not)."""
    host = Host(25_000_000)
    core = EventLoop()
    sched = Scheduler(host, core)
    m = _minikernel_vm(Kvm(host))
    start_vcpu_threads(m, host, sched)
    pages = [0]
    if log:
        vm, base = m.vm, m.config.layout.ram_base
        vm.set_user_memory_region(Machine.RAM_SLOT, base, len(m.ram), m.ram, KVM_MEM_LOG_DIRTY_PAGES)

        def read_log() -> None:
            pages[0] += sum(bin(b).count("1") for b in vm.get_dirty_log(Machine.RAM_SLOT))
            if m.stopped is None:
                core.at(core.now + 2 * MS, 1, read_log)

        core.at(2 * MS, 1, read_log)
    t0 = time.perf_counter()
    t = 0
    while m.stopped is None and t < 2000 * MS:
        t += 10 * MS
        core.run(t)
    assert m.exit_status == 0, m.stopped
    return time.perf_counter() - t0, pages[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--dirty-mib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    drv, steps = live(args.memory_mib, args.dirty_mib)
    st = drv.migration.stats
    print(f"live migration of a {args.memory_mib} MiB VM, {args.dirty_mib} MiB dirtied every 2 ms, 10 Gbit/s link:")
    print(f"  rounds {st.rounds}, pages per part {st.pages}, {st.bytes / 2**20:.1f} MiB sent, "
          f"downtime {st.downtime_ns / 1e6:.3f} ms virtual, migration steps {steps.wall_s * 1e3:.1f} ms wall")
    best_save = best_restore = float("inf")
    for _ in range(args.repeat):
        host = Host(25_000_000)
        m = Machine(Kvm(host), MachineConfig("s", memory_mib=args.memory_mib, lpt_pv_hz=10**9))
        m.ram[: args.memory_mib << 19] = bytes(range(256)) * (args.memory_mib << 11)
        m.load_model_guest(ModelKernel())
        t0 = time.perf_counter()
        data = save(m, now_ns=0, handover=(h := ModelHandover()))
        t1 = time.perf_counter()
        restore(Kvm(Host(10**9)), data, handover=h, now_ns=0)
        t2 = time.perf_counter()
        best_save, best_restore = min(best_save, t1 - t0), min(best_restore, t2 - t1)
    size = len(data)
    print(f"one-part snapshot of {args.memory_mib} MiB (half in use): {size / 2**20:.1f} MiB stream, "
          f"save {best_save * 1e3:.1f} ms ({size / 2**20 / best_save:.0f} MiB/s), "
          f"restore {best_restore * 1e3:.1f} ms ({size / 2**20 / best_restore:.0f} MiB/s), best of {args.repeat}")
    drv, um, steps, wall = unicorn_live()
    st = drv.migration.stats
    print(f"unicorn VM (minikernel, 3 vCPUs, 16 MiB, LPT 1 GHz) live-migrated 25 MHz -> 1 GHz at 80 ms: "
          f"exit {um.exit_status}, rounds {st.rounds}, pages per part {st.pages}, {st.bytes / 2**10:.0f} KiB sent, "
          f"downtime {st.downtime_ns / 1e6:.3f} ms virtual, migration steps {steps.wall_s * 1e3:.1f} ms wall "
          f"(whole 200 ms run {wall:.2f} s wall)")
    off = min(unicorn_logging_cost(False)[0] for _ in range(args.repeat))
    runs = [unicorn_logging_cost(True) for _ in range(args.repeat)]
    on, pages = min(r[0] for r in runs), runs[0][1]
    print(f"dirty logging on the unicorn VM (log read every 2 ms, {pages} page faults logged): "
          f"{on:.3f} s wall vs {off:.3f} s without, x{on / off:.2f}, best of {args.repeat}")
    print("LPT conversion rate: python bench/bench_fixedpoint.py")


if __name__ == "__main__":
    main()
