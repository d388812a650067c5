"""Migration of unicorn (AArch64 machine code) VMs: ONE_REG for every register, the dirty log, the
minikernel and the conformance guest migrated mid-run between hosts of different counter
frequencies, and a VM migrated between two `pvtime` processes over loopback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from pvtime.abi.errno import E2BIG, EINVAL, ENOENT
from pvtime.abi.uapi import (
    CORE_REG_IDS, EL1_SYSREG_IDS, KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_REG_ARM_TIMER_CNT, KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_U32, PAGE_SIZE, REG_FPCR, REG_FPSR, REG_PC, REG_PSTATE, reg_size, reg_v, reg_x, sysreg,
)
from pvtime.abi import sysregs
from pvtime.cpu import CpuKind
from pvtime.host import EventLoop, Host, Scheduler, Slice, Task
from pvtime.kvm import Kvm, KvmError, MmioExit
from pvtime.sim.migration import LinkSpec, MigrationDriver
from pvtime.vmm.builder import start_vcpu_threads
from pvtime.vmm import Machine, MachineConfig, StopReason, VcpuThread
from pvtime.vmm.images import ConsoleProcStat, packaged_image, patch_minikernel
from pvtime.vmm.migration import MigrationError, Receiver, Sender, dirty_pages, restore, save
from pvtime.vmm.migration_net import send_parts
from pvtime.vmm.migration_stream import decode, encode

MS = 1_000_000
RAM = 0x4000_0000
NSEC_PER_USER_HZ = 10_000_000
RAZ_WI = {sysreg(*r) for r in (sysregs.AMAIR_EL1, sysregs.AFSR0_EL1, sysregs.AFSR1_EL1)}


def minikernel(duration_ms: int = 200) -> bytes:
    return patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=duration_ms, busy_ms=15, idle_ms=10)


def unicorn_vm(kvm: Kvm, image: bytes, *, vcpus: int = 3, lpt: int | None = 10**9, mips: int = 100) -> Machine:
    m = Machine(kvm, MachineConfig("vm", vcpus=vcpus, memory_mib=4, cpu=CpuKind.UNICORN,
                                   instructions_per_sec=mips * 1_000_000, lpt_pv_hz=lpt))
    m.load_elf(image)
    return m


class World:
    """Hosts on one timeline (one CPU each), a unicorn VM on the first, migrations driven in time."""

    def __init__(self, hz: list[int], image: bytes, **vm: object) -> None:
        self.core = EventLoop()
        self.hosts = [Host(f, name=f"h{i}") for i, f in enumerate(hz)]
        self.scheds = [Scheduler(h, self.core) for h in self.hosts]
        self.kvms = [Kvm(h) for h in self.hosts]
        self.machine = unicorn_vm(self.kvms[0], image, **vm)  # type: ignore[arg-type]
        self.threads = start_vcpu_threads(self.machine, self.hosts[0], self.scheds[0])
        self.on = 0
        self.drivers: list[MigrationDriver] = []
        self.restored: list[tuple[bool, bool]] = []  # (RAM equal, PV-time region equal) at each restore
        self.steal: list[list[int | None]] = []  # each vCPU's record, every 2 ms, on the current host

    def migrate_at(self, at_ns: int, to: int, link: LinkSpec) -> None:
        def go() -> None:
            src = self.machine

            def start(dst: Machine, now: int) -> list[VcpuThread]:
                self.restored.append((dst.ram == src.ram, dst.pvtime_mem == src.pvtime_mem))
                threads = start_vcpu_threads(dst, self.hosts[to], self.scheds[to], start_ns=now)
                self.machine, self.threads, self.on = dst, threads, to
                return threads

            self.drivers.append(MigrationDriver(self.core, src, self.threads, self.scheds[self.on], self.kvms[to],
                                                start, at_ns=self.core.now, link=link))
        self.core.at(at_ns, 0, go)

    def sample_steal(self) -> None:
        m = self.machine
        self.steal.append([m.stolen_time(i) for i in range(len(m.vcpus))])
        if m.stopped is None:
            self.core.at(self.core.now + 2 * MS, 1, self.sample_steal)

    def run(self, limit_ns: int) -> Machine:
        t = 0
        while self.machine.stopped is None and t < limit_ns:
            t += 10 * MS
            self.core.run(t)
        return self.machine


def test_minikernel_migrated_25mhz_1ghz_25mhz_finishes_with_steal_and_proc_stat_intact() -> None:
    w = World([25_000_000, 1_000_000_000], minikernel(200))
    link = LinkSpec(setup_ns=500_000, max_rounds=3, converge_pages=0)  # 3 pre-copy rounds each
    w.migrate_at(60 * MS, 1, link)
    w.migrate_at(140 * MS, 0, link)
    w.core.at(1 * MS, 1, w.sample_steal)
    m = w.run(2000 * MS)
    console = m.console.decode()
    assert m.exit_status == 0 and m.errors == [], console + str(m.stopped)
    assert [d.error for d in w.drivers] == [None, None]
    # The dirty log missed nothing: at each restore the destination's memory is the source's.
    assert w.restored == [(True, True), (True, True)]
    for d in w.drivers:
        st = d.migration.stats
        # Round 1 sends every non-zero page; the later parts what the dirty log reports.
        assert st.rounds >= 1 and st.pages[0] > 0 and 0 < st.downtime_ns < 5 * MS
    # Steal in the records never goes backwards, across both migrations.
    for i in range(3):
        series = [s[i] for s in w.steal if s[i] is not None]
        assert series == sorted(series) and series[-1] > 0
    # What the guest printed is what its record holds, and /proc/stat is consistent with it.
    stat = ConsoleProcStat.parse(console)
    assert sorted(stat.steal_ns) == [0, 1, 2]
    for cpu, ns in stat.steal_ns.items():
        record = m.stolen_time(cpu)
        assert record is not None and 0 <= record - ns <= 2 * MS, (cpu, ns, record)
        assert stat.cpus[cpu][7] == ns // NSEC_PER_USER_HZ
        assert all(v >= 0 for v in stat.cpus[cpu])
    # No vCPU accounts more time than the run (USER_HZ = 100 over 200 ms: 20 ticks; a vCPU waiting
    # for the one host CPU misses ticks, as without migration), and the aggregate line is the
    # per-CPU sum converted once (so at most one tick more per vCPU in each column).
    for cpu, values in stat.cpus.items():
        assert 10 <= sum(values) <= 21, (cpu, values)
    agg = re.search(r"^cpu  ([\d ]+)$", console, re.M)
    assert agg is not None
    for col, total in enumerate(int(x) for x in agg[1].split()):
        per_cpu = sum(v[col] for v in stat.cpus.values())
        assert per_cpu <= total <= per_cpu + 3, (col, total, per_cpu)
    if "timer fires" in console:
        assert " early 0 " in console
    record = m.lpt_record()  # three starts (boot, two restores), each updated it: sequence 2, 4, 6
    assert m.kvm is w.kvms[0] and record is not None and record.sequence_number == 6


def test_conformance_guest_migrated_mid_run_still_passes() -> None:
    image = packaged_image("conformance").read_bytes()
    w = World([25_000_000, 1_000_000_000], image, vcpus=4, lpt=None, mips=1000)
    w.migrate_at(3 * MS, 1, LinkSpec(setup_ns=200_000))
    m = w.run(100 * MS)
    console = m.console.decode()
    assert w.drivers[0].error is None and w.restored == [(True, True)]
    assert m is not w.drivers[0].machine  # the run finished on the destination
    assert m.exit_status == 0 and re.search(r"^SUMMARY: \d+ tests, 0 unexpected failures, ", console, re.M), \
        console[-2000:] + str(m.stopped)


# --- ONE_REG and KVM_GET_REG_LIST ---------------------------------------------------------------

def _vcpu() -> tuple[Machine, Kvm]:
    kvm = Kvm(Host(25_000_000))
    return Machine(kvm, MachineConfig("r", memory_mib=1, cpu=CpuKind.UNICORN)), kvm


def _value(reg: int, seed: int) -> int:
    bits = 8 * reg_size(reg)
    return (0x9E3779B97F4A7C15_F39CC0605CEDC834 * (seed + 1)) & ((1 << bits) - 1)


def test_registers_round_trip_through_get_reg_list_and_one_reg() -> None:
    m, kvm = _vcpu()
    vcpu = m.vcpus[0]
    regs = vcpu.get_reg_list()
    assert len(regs) == len(set(regs))
    assert set(CORE_REG_IDS) | set(EL1_SYSREG_IDS) <= set(regs)
    assert sysreg(*sysregs.VBAR_EL1) == 0x6030_0000_0013_C600  # KVM's id for VBAR_EL1
    assert reg_v(0) == 0x6040_0000_0010_0054 and REG_FPSR & KVM_REG_SIZE_MASK == KVM_REG_SIZE_U32
    with pytest.raises(KvmError) as err:
        vcpu.get_reg_list(len(regs) - 1)
    assert err.value.errno == E2BIG
    assert vcpu.get_reg_list(len(regs)) == regs
    values = {}
    skip = RAZ_WI | {REG_PSTATE, KVM_REG_ARM_TIMER_CNT}
    for i, reg in enumerate(regs):
        if reg in skip or reg & 0x0FFF_0000 != 0x0010_0000 and reg not in EL1_SYSREG_IDS:
            continue  # core and EL1 system registers here; timers and PSTATE have their own rules
        value = _value(reg, i) & ~0x3 if reg == REG_PC else _value(reg, i)
        if reg in EL1_SYSREG_IDS:
            value = _value(reg, i) & 0xFFFF_F000  # low bits of some are fixed (SCTLR RES1...)
        values[reg] = value
    for reg in (sysreg(*sysregs.SCTLR_EL1), sysreg(*sysregs.CPACR_EL1), REG_FPCR, REG_FPSR):
        values.pop(reg)  # registers with reserved bits: round-trip their current value instead
    for reg, value in values.items():
        vcpu.set_one_reg(reg, value)
    assert {reg: vcpu.get_one_reg(reg) for reg in values} == values
    vcpu.set_one_reg(REG_FPCR, 0x0300_0000)
    vcpu.set_one_reg(sysreg(*sysregs.CPACR_EL1), 3 << 20)
    assert vcpu.get_one_reg(REG_FPCR) == 0x0300_0000 and vcpu.get_one_reg(sysreg(*sysregs.CPACR_EL1)) == 3 << 20
    # RAZ/WI registers take only 0; unknown ids are ENOENT, core registers of the wrong size or
    # offset EINVAL (Linux validate_core_offset).
    for reg in RAZ_WI:
        vcpu.set_one_reg(reg, 0)
        with pytest.raises(KvmError) as err:
            vcpu.set_one_reg(reg, 1)
        assert err.value.errno == EINVAL
    for bad, errno in ((sysreg(3, 0, 15, 15, 7), ENOENT),
                       ((reg_v(1) & ~KVM_REG_SIZE_MASK) | 0x0030_0000_0000_0000, EINVAL), (reg_v(1) + 1, EINVAL)):
        with pytest.raises(KvmError) as err:
            vcpu.get_one_reg(bad)
        assert err.value.errno == errno
    # A snapshot carries every register to another host.
    dst = restore(Kvm(Host(10**9)), save(m, now_ns=0), now_ns=0)
    assert {reg: dst.vcpus[0].get_one_reg(reg) for reg in values} == values
    assert dst.vcpus[0].get_one_reg(REG_FPCR) == 0x0300_0000


def test_the_stream_names_the_cpu_kind_as_it_always_has() -> None:
    """META's config and STAT's guest carry the CPU kind by name ("unicorn"): streams stay
    compatible across versions; a name this VMM does not know is refused at the first part."""
    m, kvm = _vcpu()
    stream = save(m, now_ns=0)
    part = decode(stream)
    assert part.meta["config"]["cpu"] == "unicorn" and part.state is not None
    assert part.state["guest"] == {"kind": "unicorn"}
    assert restore(Kvm(Host(10**9)), stream, now_ns=0).config.cpu is CpuKind.UNICORN
    part.meta["config"]["cpu"] = "x86"
    with pytest.raises(MigrationError, match="CPU backend 'x86'"):
        restore(Kvm(Host(10**9)), encode(part), now_ns=0)


# --- the dirty log --------------------------------------------------------------------------------

def _store_loop(m: Machine) -> None:
    """x0 = a page in RAM; loop: store x1 there, then an MMIO write (an exit to the VMM)."""
    code = [0xF9000001, 0xF9000061, 0x17FFFFFE]  # str x1, [x0]; str x1, [x3]; b .-8
    for i, word in enumerate(code):
        m.ram[i * 4:i * 4 + 4] = word.to_bytes(4, "little")
    vcpu = m.vcpus[0]
    vcpu.set_one_reg(REG_PC, RAM)
    vcpu.set_one_reg(reg_x(0), RAM + 5 * PAGE_SIZE)
    vcpu.set_one_reg(reg_x(1), 7)
    vcpu.set_one_reg(reg_x(3), 0x0A00_0000)  # no memslot: an MMIO exit


def test_dirty_log_reports_a_guest_store_exactly_once_per_round() -> None:
    kvm = Kvm(Host(25_000_000))
    m = Machine(kvm, MachineConfig("d", memory_mib=1, cpu=CpuKind.UNICORN, pvtime=False))
    _store_loop(m)
    vm = m.vm
    with pytest.raises(KvmError) as err:
        vm.get_dirty_log(Machine.RAM_SLOT)
    assert err.value.errno == ENOENT  # not logging
    vm.set_user_memory_region(Machine.RAM_SLOT, RAM, len(m.ram), m.ram, KVM_MEM_LOG_DIRTY_PAGES)

    def run() -> object:
        with kvm.host.running(Slice(Task(1, "vcpu"), 0, 10 * MS, 0)):
            return m.vcpus[0].run()

    assert isinstance(run(), MmioExit)
    assert dirty_pages(vm.get_dirty_log(Machine.RAM_SLOT)) == [5]
    assert dirty_pages(vm.get_dirty_log(Machine.RAM_SLOT)) == []  # read and cleared
    for _ in range(3):  # the next round: the same store faults once more, and only once
        assert isinstance(run(), MmioExit)
    assert dirty_pages(vm.get_dirty_log(Machine.RAM_SLOT)) == [5]
    assert int.from_bytes(m.ram[5 * PAGE_SIZE:5 * PAGE_SIZE + 8], "little") == 7
    # KVM's own stores are logged too: the stolen-time record it writes at each vcpu_load.
    m.vcpus[0].set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, RAM + 9 * PAGE_SIZE)
    assert isinstance(run(), MmioExit)
    assert dirty_pages(vm.get_dirty_log(Machine.RAM_SLOT)) == [5, 9]
    vm.set_user_memory_region(Machine.RAM_SLOT, RAM, len(m.ram), m.ram, 0)  # logging off: writable again
    assert isinstance(run(), MmioExit)
    with pytest.raises(KvmError):
        vm.get_dirty_log(Machine.RAM_SLOT)


# --- failure, and two processes -----------------------------------------------------------------------

def _solo(hz: int, image: bytes) -> tuple[EventLoop, Scheduler, Machine, list[VcpuThread]]:
    host = Host(hz, name="src")
    core = EventLoop()
    sched = Scheduler(host, core)
    m = unicorn_vm(Kvm(host), image)
    return core, sched, m, start_vcpu_threads(m, host, sched)


def _finish(core: EventLoop, m: Machine) -> None:
    t = core.now
    while m.stopped is None and t < 2000 * MS:
        t += 10 * MS
        core.run(t)


def _pause_and_send(core: EventLoop, m: Machine, threads: list[VcpuThread], at_ns: int,
                    deliver: Callable[[list[bytes]], bool], sched: Scheduler) -> bool:
    core.run(at_ns)
    sender = Sender(m, "u")
    parts = [sender.precopy()]
    core.run(at_ns + 5 * MS)  # the guest keeps running (and, at its 250 Hz tick, writing) between rounds
    m.pause()
    parts.append(sender.final(max([core.now] + [t.last_ns for t in threads])))
    if deliver(parts):
        m.stop(StopReason.migrated("the receiver"))
        return True
    sender.stop_logging()
    m.resume()
    for t in threads:
        assert t.task is not None
        sched.wake(t.task)
    return False


def test_corrupt_stream_is_refused_and_the_unicorn_source_runs_on() -> None:
    core, sched, m, threads = _solo(25_000_000, minikernel(60))

    def deliver(parts: list[bytes]) -> bool:
        final = bytearray(parts[1])
        final[len(final) // 2] ^= 0x40
        receiver = Receiver(Kvm(Host(10**9)))
        receiver.feed(parts[0])
        with pytest.raises(MigrationError, match="checksum"):
            receiver.feed(bytes(final))
        return False

    assert not _pause_and_send(core, m, threads, 20 * MS, deliver, sched)
    _finish(core, m)
    assert m.exit_status == 0, m.console.decode()[-500:] + str(m.stopped)


def test_unicorn_vm_migrates_between_two_processes_over_loopback() -> None:
    listener = subprocess.Popen([sys.executable, "-m", "pvtime.cli", "migrate", "listen", "--native", "1000000000",
                                 "--run-ms", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = listener.stderr.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        core, sched, m, threads = _solo(25_000_000, minikernel(100))

        def deliver(parts: list[bytes]) -> bool:
            assert decode(parts[1]).pages  # the final part: pages the guest dirtied after round 1
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                ok, message = send_parts(sock, parts)
            assert ok, message
            return ok

        assert _pause_and_send(core, m, threads, 30 * MS, deliver, sched)
        out, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    result = json.loads(out)
    assert result["now"]["stopped"] == "guest exit 0 (semihosting)", result
    # The guest's steal record came along and kept growing on the destination.
    now, restored = result["now"]["steal_ns"], result["at_restore"]["steal_ns"]
    assert all(a >= b for a, b in zip(now, restored)) and restored[0] > 0
    assert "minikernel: done" in result["now"]["console"]
    assert m.stopped == StopReason.migrated("the receiver")


def test_cli_migrates_an_elf_image_between_two_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pvtime.vmm.images import packaged_image, patch_minikernel

    image = tmp_path / "mk.elf"
    image.write_bytes(patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=80))
    listener = subprocess.Popen([sys.executable, "-m", "pvtime.cli", "migrate", "listen", "--native", "1000000000",
                                 "--run-ms", "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(listener.stderr.readline().rsplit(":", 1)[1])
        send = subprocess.run([sys.executable, "-m", "pvtime.cli", "migrate", "send", "--to", f"127.0.0.1:{port}",
                               "--image", str(image), "--vcpus", "2", "--run-ms", "30", "--native", "25000000"],
                              capture_output=True, text=True, timeout=60)
        out, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert send.returncode == 0, send.stderr
    sent = json.loads(send.stdout)
    assert sent["accepted"] and sent["now"]["stopped"].startswith("migrated")
    got = json.loads(out)["now"]
    assert got["exit_status"] == 0, got["console"][-400:]
    # The LPT record travelled: a second VM start on a 1 GHz host, PV clock still at 1 GHz.
    assert got["record"]["sequence_number"] == 4 and got["record"]["native_freq"] == 1_000_000_000
    assert "clocksource pv_lpt_counter freq 1000000000" in got["console"]
    assert "CNTFRQ_EL0 = 1000000000 Hz" in sent["at_save"]["console"]  # printed at boot, on the source
