"""The C mini kernel's Live Physical Time guest side (guests/minikernel.c) on the unicorn backend.

The kernel mirrors the Python model guest (pvtime.guest.lpt) and must compute exactly what
pvtime.fixedpoint computes: with LPT configured on the VM it sees CNTFRQ = pv_freq, its clock is
native_to_pv of the counter, its timers never fire before their PV deadline, EL0 counter reads
trap (ESR EC 0x18) and come back as PV values, and the event-stream divider is translated.
Without LPT it behaves as before (native CNTFRQ, stolen time as usual).
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pvtime import fixedpoint
from pvtime.abi.records import LPT_SEQUENCE_OFFSET
from pvtime.abi.sysregs import CNTKCTL_EL0PCTEN, CNTKCTL_EL0VCTEN, CNTKCTL_EVNTEN
from pvtime.abi.uapi import (
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA, KVM_REG_ARM_CNTKCTL_EL1, KVM_REG_ARM_TIMER_CNT,
)
from pvtime.cpu import CpuKind
from pvtime.guest.lpt import linux_evnti
from pvtime.host import Host
from pvtime.host.events import EventLoop
from pvtime.host.scheduler import Scheduler
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig, build_machine, start_vcpu_threads

MS = 1_000_000
DURATION_MS = 100
HZ = 250
EL0_READS = 8
IMAGE = Path(str(files("pvtime") / "images" / "minikernel.elf"))


def _patched_image(duration_ms: int, busy_ms: int = 30, idle_ms: int = 20) -> bytes:
    """The shipped image with `minikernel_config` = ("PVMKCFG1", duration, busy, idle)."""
    data = IMAGE.read_bytes()
    elf = ELFFile(io.BytesIO(data))
    addr = elf.get_section_by_name(".symtab").get_symbol_by_name("minikernel_config")[0]["st_value"]
    seg = next(s for s in elf.iter_segments()
               if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= addr < s["p_vaddr"] + s["p_filesz"])
    off = seg["p_offset"] + addr - seg["p_vaddr"]
    assert data[off:off + 8] == b"PVMKCFG1"
    return data[:off + 8] + struct.pack("<3Q", duration_ms, busy_ms, idle_ms) + data[off + 32:]


@dataclass
class Run:
    machine: Machine
    console: str
    virtual_ns: int

    def line(self, pattern: str) -> re.Match[str]:
        m = re.search(pattern, self.console, re.M)
        assert m is not None, f"no line matching {pattern!r} in:\n{self.console}"
        return m

    def ints(self, prefix: str, first: str = "") -> dict[str, int]:
        """The line `prefix k1 v1 k2 v2 ...` (k1 == `first` if given) as {k: int(v)} (hex with 0x)."""
        words = self.line(rf"^{prefix} ({first}.*)$")[1].split()
        return {k: int(v, 0) for k, v in zip(words[::2], words[1::2])}


def run_minikernel(native_hz: int, pv_hz: int | None, *, vcpus: int = 2, host_cpus: int = 2,
                   between=None) -> Run:
    """Boot the mini kernel on a `native_hz` host, LPT at `pv_hz` (None: not configured), until it
    exits; `between(machine, t_ns)` runs every 10 ms of virtual time (to poke the LPT record)."""
    host = Host(native_hz, ncpus=host_cpus, name="host")
    machine = build_machine(Kvm(host), MachineConfig("g", vcpus=vcpus, memory_mib=64, cpu=CpuKind.UNICORN,
                                                     instructions_per_sec=100_000_000, lpt_pv_hz=pv_hz),
                            image=_patched_image(DURATION_MS))
    core = EventLoop()
    sched = Scheduler(host, core, end_ns=5_000 * MS)
    start_vcpu_threads(machine, host, sched)
    t = 0
    while machine.stopped is None and t < 5_000 * MS:
        t += 10 * MS
        core.run(t)
        if between is not None:
            between(machine, t)
    sched.finish()
    console = bytes(machine.console).decode()
    assert machine.errors == [] and machine.exit_status == 0, console + str(machine.stopped)
    return Run(machine, console, host.clock_ns)


@cache
def lpt_run(native_hz: int, pv_hz: int) -> Run:
    return run_minikernel(native_hz, pv_hz)


PAIRS = [(25_000_000, 1_000_000_000), (1_000_000_000, 25_000_000)]


@pytest.mark.parametrize(("native_hz", "pv_hz"), PAIRS)
def test_lpt_guest_sees_pv_frequency_and_the_host_record(native_hz: int, pv_hz: int) -> None:
    run = lpt_run(native_hz, pv_hz)
    run.line(rf"^minikernel: arm-pv: using LPT, {pv_hz} Hz over a {native_hz} Hz counter$")
    run.line(rf"^minikernel: 2 vCPUs, CNTFRQ_EL0 = {pv_hz} Hz,")
    assert run.ints("clocksource pv_lpt_counter") == {"freq": pv_hz}
    sf = fixedpoint.scale_factors(native_hz, pv_hz)
    lpt = run.ints("lpt", "pv_freq ")
    assert lpt == {"pv_freq": pv_hz, "native_freq": native_hz, "seq": 2, "scale_mult": sf.scale_mult, "fracbits": sf.fracbits,
                   "rscale_mult": sf.rscale_mult, "rfracbits": sf.rfracbits}
    assert run.ints("lpt", "retries ") == {"retries": 0, "refreshes": 0, "bad_records": 0}


@pytest.mark.parametrize(("native_hz", "pv_hz"), PAIRS)
def test_lpt_clock_is_native_to_pv_of_the_counter(native_hz: int, pv_hz: int) -> None:
    run = lpt_run(native_hz, pv_hz)
    sf = fixedpoint.scale_factors(native_hz, pv_hz)
    clock = run.ints("clock")
    assert clock["value"] == fixedpoint.native_to_pv(clock["native"], sf)  # the 128-bit product, exactly
    # The native count is the VM's virtual counter at that read: a little before the end.
    end = run.machine.vcpus[0].get_one_reg(KVM_REG_ARM_TIMER_CNT)
    assert 0 <= end - clock["native"] <= native_hz // 100
    # ... and the PV clock runs at pv_hz in virtual time (the counter starts with the VM).
    assert abs(clock["value"] * 1_000_000_000 // pv_hz - run.virtual_ns) <= 10 * MS


@pytest.mark.parametrize(("native_hz", "pv_hz"), PAIRS)
def test_lpt_timers_never_fire_early(native_hz: int, pv_hz: int) -> None:
    run = lpt_run(native_hz, pv_hz)
    timer = run.ints("timer")
    assert timer["early"] == 0
    assert timer["fires"] >= 2 * (DURATION_MS * HZ // 1000 - 1)  # every tick of both vCPUs
    # Uncontended (2 vCPUs, 2 host CPUs): late only by the conversion and the IRQ entry.
    assert timer["max_late_ns"] <= 50_000


@pytest.mark.parametrize(("native_hz", "pv_hz"), PAIRS)
def test_lpt_el0_counter_reads_trap_and_are_emulated_as_pv(native_hz: int, pv_hz: int) -> None:
    run = lpt_run(native_hz, pv_hz)
    el0 = run.ints("el0")
    assert el0["reads"] == EL0_READS
    assert el0["traps"] == EL0_READS + 2  # CNTVCT x8, CNTPCT, CNTFRQ: every one trapped (EC 0x18)
    assert el0["cntfrq"] == pv_hz
    assert el0["monotonic"] == 1
    assert el0["before"] <= el0["first"] <= el0["last"] <= el0["cntpct"] <= el0["after"]  # CNTVOFF = 0
    # PV values: far from the raw native counts when the frequencies differ this much.
    native_end = run.ints("clock")["native"]
    assert el0["last"] > native_end if pv_hz > native_hz else el0["after"] < native_end // 10


@pytest.mark.parametrize(("native_hz", "pv_hz"), PAIRS)
def test_lpt_event_stream_divider_is_translated_and_el0_access_is_off(native_hz: int, pv_hz: int) -> None:
    run = lpt_run(native_hz, pv_hz)
    sf = fixedpoint.scale_factors(native_hz, pv_hz)
    guest = linux_evnti(pv_hz)
    programmed = fixedpoint.translate_evnti(guest, sf)
    assert programmed != guest
    for vcpu in run.machine.vcpus:
        ev = run.ints(f"evnti cpu{vcpu.id}")
        assert ev == {"guest": guest, "programmed": programmed, "cntkctl": CNTKCTL_EVNTEN | programmed << 4}
        assert vcpu.get_one_reg(KVM_REG_ARM_CNTKCTL_EL1) == ev["cntkctl"]


def test_without_lpt_the_kernel_uses_the_native_counter_as_before() -> None:
    native_hz = 62_500_000
    run = run_minikernel(native_hz, None)
    assert "arm-pv" not in run.console and not re.search(r"^lpt ", run.console, re.M)
    run.line(r"^minikernel: stolen time supported")
    run.line(rf"^minikernel: 2 vCPUs, CNTFRQ_EL0 = {native_hz} Hz,")
    assert run.ints("clocksource arch_sys_counter") == {"freq": native_hz}
    clock = run.ints("clock")
    assert clock["value"] == clock["native"]
    assert run.ints("timer")["early"] == 0
    assert {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", run.console, re.M)} == {0: 0, 1: 0}
    # Linux's user access: CNTVCT (and CNTFRQ) readable at EL0, CNTPCT trapped and emulated raw.
    el0 = run.ints("el0")
    assert el0["traps"] == 1 and el0["cntfrq"] == native_hz and el0["monotonic"] == 1
    evnti = linux_evnti(native_hz)
    for vcpu in run.machine.vcpus:
        ev = run.ints(f"evnti cpu{vcpu.id}")
        assert ev == {"guest": evnti, "programmed": evnti,
                      "cntkctl": CNTKCTL_EL0VCTEN | CNTKCTL_EVNTEN | evnti << 4}
        assert vcpu.get_one_reg(KVM_REG_ARM_CNTKCTL_EL1) & CNTKCTL_EL0PCTEN == 0


def test_lpt_with_contention_still_accounts_steal() -> None:
    run = run_minikernel(25_000_000, 1_000_000_000, vcpus=2, host_cpus=1)
    steal = {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", run.console, re.M)}
    assert sorted(steal) == [0, 1] and all(v > 0 for v in steal.values())
    assert run.ints("timer")["early"] == 0


def test_sequence_changes_refresh_the_factors_and_odd_values_are_retried() -> None:
    """A new VM start (sequence += 2) makes every vCPU re-read and re-check the record; an odd
    (reserved) sequence makes every access retry until it settles."""
    seen = []

    def poke(machine: Machine, t: int) -> None:  # the VMM writes the record in its own buffer
        ipa = machine.vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA)
        mem, off = machine.pvtime_mem, ipa - machine.config.layout.pvtime_base + LPT_SEQUENCE_OFFSET
        assert mem is not None
        seq = struct.unpack_from("<Q", mem, off)[0]
        if t == 30 * MS:
            struct.pack_into("<Q", mem, off, seq | 1)
        elif t == 40 * MS:
            struct.pack_into("<Q", mem, off, (seq & ~1) + 2)
        seen.append(seq)

    run = run_minikernel(25_000_000, 1_000_000_000, between=poke)
    assert 3 in seen  # the odd value was in place for a while
    stats = run.ints("lpt", "retries ")
    assert stats["retries"] > 0 and stats["refreshes"] == 2 and stats["bad_records"] == 0
    assert run.ints("lpt", "pv_freq ")["seq"] == 4
    assert run.ints("timer")["early"] == 0


def test_a_record_with_wrong_scale_factors_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest checks the factors against its own computation (128-by-64 division) before use:
    a record whose scale_mult is off by one is refused, and the kernel keeps the native counter."""
    import pvtime.kvm.lpt as kvm_lpt

    original = kvm_lpt.vm_start

    def start_then_corrupt(vm) -> None:  # type: ignore[no-untyped-def]
        original(vm)
        raw = vm.memory.read(vm.lpt.ipa + 24, 8)
        vm.memory.write(vm.lpt.ipa + 24, struct.pack("<Q", struct.unpack("<Q", raw)[0] + 1))

    monkeypatch.setattr(kvm_lpt, "vm_start", start_then_corrupt)
    native_hz = 25_000_000
    run = run_minikernel(native_hz, 1_000_000_000, vcpus=1, host_cpus=1)
    run.line(r"^minikernel: arm-pv: LPT record rejected \(scale factors do not match the frequencies\); "
             r"using the architected counter$")
    assert run.ints("clocksource arch_sys_counter") == {"freq": native_hz}
    assert not re.search(r"^lpt ", run.console, re.M)
