"""Migration downtime in virtual time, and what a migration costs in wall time.

Run: ``python bench/bench_migration.py [--memory-mib M] [--dirty-mib D] [--repeat R]``.
A model-kernel VM with LPT (1 GHz PV) on a 25 MHz host is live-migrated to a 1 GHz host over a
10 Gbit/s link while a guest-side writer dirties D MiB per pre-copy round; printed: pre-copy
rounds, bytes, the downtime the guest sees (virtual time: last guest instruction on the source to
the restore on the destination), and the wall time of the save/restore steps. The conversion rate
of the LPT arithmetic itself is bench/bench_fixedpoint.py. Wall clock is used here only.
"""

from __future__ import annotations

import argparse
import time

from common import machine_line

from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.host import EventLoop, Host, Scheduler
from pvtime.kvm import Kvm
from pvtime.sim.migration import LinkSpec, MigrationDriver, _start
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import ModelHandover, restore, save

MS = 1_000_000


def live(memory_mib: int, dirty_mib: int) -> tuple[MigrationDriver, float]:
    core = EventLoop()
    hosts = [Host(25_000_000, name="a"), Host(1_000_000_000, name="b")]
    scheds = [Scheduler(h, core) for h in hosts]
    kvms = [Kvm(h) for h in hosts]
    m = Machine(kvms[0], MachineConfig("vm", vcpus=2, memory_mib=memory_mib, lpt_pv_hz=10**9))
    m.ram[: memory_mib << 19] = bytes(range(256)) * (memory_mib << 11)  # half of RAM in use
    m.load_model_guest(ModelKernel(KernelOptions(workload=Workload(busy_ns=(1 * MS, 3 * MS)))))
    threads = _start(m, hosts[0], scheds[0])
    drv = MigrationDriver(core, m, threads, scheds[0], kvms[1], lambda mm, now: _start(mm, hosts[1], scheds[1], now),
                          at_ns=50 * MS, link=LinkSpec())
    dirty = dirty_mib << 20
    stamp = [0]

    def writer() -> None:  # stands in for guest stores between rounds
        stamp[0] += 1
        m.ram[:dirty] = bytes([stamp[0] & 0xFF]) * dirty
        if drv.result is None and drv.error is None and m.stopped is None:
            core.at(core.now + 2 * MS, 1, writer)

    core.at(50 * MS, 1, writer)
    t0 = time.perf_counter()
    core.run(400 * MS)
    return drv, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--dirty-mib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    drv, _ = live(args.memory_mib, args.dirty_mib)
    st = drv.migration.stats
    print(f"live migration of a {args.memory_mib} MiB VM, {args.dirty_mib} MiB dirtied every 2 ms, 10 Gbit/s link:")
    print(f"  rounds {st.rounds}, pages per part {st.pages}, {st.bytes / 2**20:.1f} MiB sent, "
          f"downtime {st.downtime_ns / 1e6:.3f} ms virtual, migration steps {drv.wall_s * 1e3:.1f} ms wall")
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
    print("LPT conversion rate: python bench/bench_fixedpoint.py")


if __name__ == "__main__":
    main()
