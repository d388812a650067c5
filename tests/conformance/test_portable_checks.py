"""The conformance guest's portable verdicts under pvtime, and the device tree it reads them from.

The guest (guests/conformance.c) finds the platform in the device tree pvtime's VMM puts at the
start of RAM for an ELF, as QEMU does for a bare-metal ELF (hw/arm/boot.c); it skips, with the
reason, what the hypervisor does not offer, and fails it only when `expect-pvtime` is on the
command line (/chosen/bootargs); a steal check that needs contention skips "(no contention)" on
a host that does not overcommit.
"""

from __future__ import annotations

import re
import struct
from functools import cache
from importlib.resources import files
from pathlib import Path

import fdt
import pytest

from pvtime.abi.uapi import KVM_REG_ARM_STD_HYP_BMAP
from pvtime.cpu import CpuKind
from pvtime.host import Host
from pvtime.host.events import EventLoop
from pvtime.host.scheduler import Scheduler
from pvtime.kvm import Kvm
from pvtime.sim.guest_run import GuestRunOptions, run_guest
from pvtime.vmm import Machine, MachineConfig, start_vcpu_threads
from pvtime.vmm.fdt import FdtWriter

MS = 1_000_000
MiB = 1 << 20
IMAGE = Path(str(files("pvtime") / "images" / "conformance.elf"))
RAM_BASE = 0x4000_0000
FDT_MAGIC = b"\xd0\x0d\xfe\xed"


def run(config: MachineConfig, *, bootargs: str = "", hide_pv_time: bool = False,
        dtb: bytes | None = None) -> tuple[Machine, str]:
    """Boot the conformance guest on `config` (2 host CPUs) until it exits; `dtb` replaces the
    VMM's device tree at the start of RAM."""
    host = Host(62_500_000, ncpus=2, name="host")
    machine = Machine(Kvm(host), config)
    if hide_pv_time:  # the VMM clears the firmware bitmap's PV_TIME bit, as QEMU's kvm-steal-time=off
        machine.vcpus[0].set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
    machine.load_elf(IMAGE, bootargs=bootargs)
    if dtb is not None:
        machine.ram[:len(dtb)] = dtb
    core = EventLoop()
    sched = Scheduler(host, core, end_ns=10_000 * MS)
    start_vcpu_threads(machine, host, sched)
    t = 0
    while machine.stopped is None and t < 10_000 * MS:
        t += 10 * MS
        core.run(t)
    sched.finish()
    return machine, bytes(machine.console).decode()


def verdicts(console: str) -> dict[str, tuple[str, str]]:
    """Check name -> (PASS|FAIL|SKIP, reason or details)."""
    out = {}
    for m in re.finditer(r"^(PASS|FAIL|SKIP): (.*)$", console, re.M):
        name, why = m[2], ""
        if m[1] != "PASS":
            name, _, why = m[2].rpartition(" (")
        out[name] = (m[1], why.removesuffix(")"))
    return out


def unicorn(vcpus: int, *, pvtime: bool = True) -> MachineConfig:
    return MachineConfig("g", vcpus=vcpus, memory_mib=64, cpu=CpuKind.UNICORN, pvtime=pvtime)


def test_the_vmm_puts_the_device_tree_at_the_start_of_ram_below_an_elf() -> None:
    machine = Machine(Kvm(Host(62_500_000, ncpus=1, name="h")), unicorn(3))
    machine.load_elf(IMAGE, bootargs="expect-pvtime quiet")
    ram = bytes(machine.ram)
    assert ram[:4] == FDT_MAGIC
    tree = fdt.parse_dtb(ram[:struct.unpack(">I", ram[4:8])[0]])
    assert list(tree.get_node("/memory@40000000").get_property("reg").data) == [0, RAM_BASE, 0, 64 * MiB]
    assert tree.get_node("/chosen").get_property("bootargs").value == "expect-pvtime quiet"
    assert tree.get_node("/psci").get_property("method").value == "hvc"
    assert [n.name for n in tree.get_node("/cpus").nodes] == ["cpu@0", "cpu@1", "cpu@2"]
    # No vGIC: no interrupt controller, the timer's interrupt is line-level (the machine contract).
    assert not any(n.get_property("interrupt-controller") is not None for n in tree.get_node("/").nodes)


def test_the_vmm_leaves_ram_alone_when_the_elf_starts_at_its_base() -> None:
    """QEMU puts the tree at the base of RAM only when it fits below the ELF; so does pvtime."""
    # A 1-instruction ELF (b .) linked at the RAM base.
    code = struct.pack("<I", 0x1400_0000)
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 2, 183, 1,
                       RAM_BASE, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, RAM_BASE, RAM_BASE, len(code), len(code), 4)
    machine = Machine(Kvm(Host(62_500_000, ncpus=1, name="h")), unicorn(1))
    machine.load_elf(ehdr + phdr + code)
    assert bytes(machine.ram[:8]) == code + bytes(4)


def test_the_guest_reads_the_platform_from_that_tree() -> None:
    result = run_guest(IMAGE.read_bytes(), GuestRunOptions(vcpus=2, host_cpus=2, memory_mib=48))
    console = result.console.decode()
    assert "conformance: device tree at 0x40000000 (start of RAM); PSCI 1.1 over hvc; " \
           "no GIC (line-level timer interrupt); timer PPI 27; console PL011 at 0x9000000" in console
    assert "conformance: memory 0x40000000-0x42ffffff" in console  # 48 MiB
    assert "conformance: SMCCC 0x10001; PV time offered" in console


def test_without_contention_the_contention_check_is_skipped_and_nothing_else() -> None:
    result = run_guest(IMAGE.read_bytes(), GuestRunOptions(vcpus=2, host_cpus=2))
    console = result.console.decode()
    assert result.exit_status == 0, console
    got = verdicts(console)
    assert {k: v for k, v in got.items() if v[0] != "PASS"} == {
        "steal: time kept from running shows up in stolen_time": ("SKIP", "no contention")}
    assert re.search(r"^SUMMARY: \d+ tests, 0 unexpected failures, 1 skipped$", console, re.M)
    assert re.search(r"^INFO: steal: cpu0: window \d+ ns, kept away 0 ns, stolen_time \+0 ns$", console, re.M)


@cache
def hidden(how: str, bootargs: str = "") -> tuple[Machine, str]:
    if how == "no IPA":  # the VMM sets no stolen-time IPA: PV_TIME_FEATURES(PV_TIME_ST) is -1
        return run(unicorn(2, pvtime=False), bootargs=bootargs)
    return run(unicorn(2), bootargs=bootargs, hide_pv_time=True)  # ARCH_FEATURES is -1


REASONS = {"no IPA": "PV time not offered: PV_TIME_FEATURES(PV_TIME_ST) != 0",
           "bitmap": "PV time not offered: ARCH_FEATURES(PV_TIME_FEATURES) != 0"}


@pytest.mark.parametrize("how", list(REASONS))
def test_pv_time_not_offered_is_skipped_with_the_probe_that_said_so(how: str) -> None:
    machine, console = hidden(how)
    assert machine.exit_status == 0, console
    got = verdicts(console)
    skipped = {k for k, (v, _) in got.items() if v == "SKIP"}
    assert all(got[k][1] == REASONS[how] for k in skipped), got
    # Every PV_TIME_ST and record check is among them (smc#1's are about the SMC immediate);
    # what does not need PV time passes.
    pv_time = {k for k in got if ("PV_TIME_ST" in k or "record" in k or k.startswith(("steal:", "pv-time:")))
               and not k.startswith("smc#1:")}
    assert len(pv_time) >= 30 and pv_time <= skipped
    assert got["hvc#0: SMCCC_VERSION >= 1.1"] == ("PASS", "")
    assert got["smc#0: unknown 0xc5000030: x1..x3 zero or preserved"] == ("PASS", "")
    assert not any(v == "FAIL" for v, _ in got.values())


@pytest.mark.parametrize("how", list(REASONS))
def test_expect_pvtime_turns_those_skips_into_failures(how: str) -> None:
    machine, console = hidden(how, "expect-pvtime")
    assert machine.exit_status == 1, console
    got = verdicts(console)
    failed = {k: w for k, (v, w) in got.items() if v == "FAIL"}
    assert failed and not any(v == "SKIP" for v, _ in got.values())
    skipped_without = {k for k, (v, _) in verdicts(hidden(how)[1]).items() if v == "SKIP"}
    assert set(failed) == skipped_without
    assert all(w.startswith(f"cpu0: expect-pvtime, but {REASONS[how]}") for w in failed.values()), failed


def kvmtool_like_tree(*, reserve_pv_region: bool) -> bytes:
    """A tree unlike pvtime's own: memory claimed from 0x08000000 (over the PV-time records at
    0x090a0000), the records in /reserved-memory or not, the console named by an /aliases entry
    with options, and the cpu nodes out of order (the boot CPU last)."""
    w = FdtWriter()
    w.begin_node("")
    w.prop_u32("#address-cells", 2)
    w.prop_u32("#size-cells", 2)
    w.begin_node("chosen")
    w.prop_str("stdout-path", "serial0:115200n8")
    w.end_node()
    w.begin_node("aliases")
    w.prop_str("serial0", "/pl011@9000000")
    w.end_node()
    w.begin_node("memory@8000000")
    w.prop_str("device_type", "memory")
    w.prop_u64("reg", 0x0800_0000, RAM_BASE + 64 * MiB - 0x0800_0000)
    w.end_node()
    if reserve_pv_region:
        w.begin_node("reserved-memory")
        w.prop_u32("#address-cells", 2)
        w.prop_u32("#size-cells", 2)
        w.prop("ranges")
        w.begin_node("pvtime@90a0000")
        w.prop_u64("reg", 0x090A_0000, 0x1_0000)
        w.prop("no-map")
        w.end_node()
        w.end_node()
    w.begin_node("cpus")
    w.prop_u32("#address-cells", 2)
    w.prop_u32("#size-cells", 0)
    for mpidr in (1, 0):
        w.begin_node(f"cpu@{mpidr}")
        w.prop_str("device_type", "cpu")
        w.prop_u64("reg", mpidr)
        w.end_node()
    w.end_node()
    w.begin_node("psci")
    w.prop_str("compatible", "arm,psci-0.2")
    w.prop_str("method", "hvc")
    w.end_node()
    w.begin_node("pl011@9000000")
    w.prop_str("compatible", "arm,pl011", "arm,primecell")
    w.prop_u64("reg", 0x0900_0000, 0x1000)
    w.end_node()
    w.end_node()
    return w.finish()


@pytest.mark.parametrize("reserved", [True, False], ids=["reserved", "in-ram"])
def test_a_record_inside_the_guests_memory_fails_unless_the_tree_reserves_it(reserved: bool) -> None:
    # The same machine as another VMM would describe it.
    machine, console = run(unicorn(2), dtb=kvmtool_like_tree(reserve_pv_region=reserved))
    assert "conformance: 2 vCPUs," in console and "memory 0x8000000-0x43ffffff" in console
    if reserved:
        assert "conformance: reserved 0x90a0000-0x90affff" in console
    got = verdicts(console)
    assert got["psci: MPIDR_EL1 affinity is a cpu node's reg"] == ("PASS", "")  # boot CPU found last
    assert got["psci: CPU_ON passes the context id in x0"] == ("PASS", "")
    placement = [got[f"{c}: PV_TIME_ST record lies outside the DT's memory or in /reserved-memory"]
                 for c in ("hvc#0", "smc#0", "hvc#1")]
    if reserved:
        assert machine.exit_status == 0, console
        assert placement == [("PASS", "")] * 3
    else:
        assert machine.exit_status == 1, console
        assert placement == [("FAIL", "cpu0: expected 0x1 got 0x0; cpu1: expected 0x1 got 0x0")] * 3
        # The record is then not read as if it were the hypervisor's.
        assert got["hvc#0: record.revision == 0"] == ("SKIP", "PV_TIME_ST gave no usable address")
