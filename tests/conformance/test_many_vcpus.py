"""The C guests bring up more than 16 vCPUs.

The hypervisor packs vCPU MPIDRs as KVM's reset_mpidr does, 16 per Aff0 (vCPU 16 is 0x100), so
the guest runtime (guests/runtime: rt_cpu_mpidr, rt_mpidr_to_cpu, the start-up code) must target
PSCI at the packed MPIDR and decode its own index from all of Aff0..Aff2. With MPIDR = index
assumed, AFFINITY_INFO(16) answers INVALID_PARAMETERS and the programs silently run on 16 vCPUs.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from pvtime.kvm.traps import reset_mpidr
from pvtime.sim.guest_run import GuestRunOptions, run_guest
from pvtime.vmm.images import patch_minikernel

IMAGES = Path(str(files("pvtime") / "images"))
VCPUS = 20
# 100 MIPS keeps the runs short in wall time; the programs' checks do not depend on it.
OPTIONS = GuestRunOptions(vcpus=VCPUS, host_cpus=2, instructions_per_sec=100_000_000)


def test_vcpus_past_16_have_aff1_set() -> None:
    assert reset_mpidr(15) == 0x8000_000F and reset_mpidr(16) == 0x8000_0100
    assert reset_mpidr(VCPUS - 1) == 0x8000_0103


def test_conformance_guest_starts_and_checks_20_vcpus() -> None:
    result = run_guest((IMAGES / "conformance.elf").read_bytes(), OPTIONS)
    console = result.console.decode()
    assert result.errors == [] and result.exit_status == 0, console + str(result.stopped)
    assert f"conformance: {VCPUS} vCPUs, CNTFRQ_EL0" in console
    assert re.search(r"^SUMMARY: \d+ tests, 0 unexpected failures, 0 skipped$", console, re.M), console
    assert "FAIL" not in console
    # Every vCPU ran guest code and asked for its own record (the guest checks that the records
    # are distinct, and that its MPIDR_EL1 is the device tree's cpu node it was started as).
    assert [v.vcpu for v in result.vcpus] == list(range(VCPUS))
    for v in result.vcpus:
        assert v.instructions > 0, v
        assert v.st_baseline_ns is not None, v
        assert v.record_steal_ns == v.host_steal_ns, v


def test_minikernel_runs_its_tick_on_20_vcpus() -> None:
    data = patch_minikernel((IMAGES / "minikernel.elf").read_bytes(), duration_ms=60, busy_ms=8, idle_ms=4)
    result = run_guest(data, OPTIONS)
    console = result.console.decode()
    assert result.errors == [] and result.exit_status == 0, console + str(result.stopped)
    assert f"minikernel: {VCPUS} vCPUs," in console
    ticks = {int(m[1]): int(m[2]) for m in re.finditer(r"^minikernel: cpu(\d+) ticks (\d+) ", console, re.M)}
    steal = {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", console, re.M)}
    stat = {int(m[1]) for m in re.finditer(r"^cpu(\d+) [\d ]+$", console, re.M)}
    assert sorted(ticks) == sorted(steal) == sorted(stat) == list(range(VCPUS)), console
    assert all(n > 0 for n in ticks.values()), ticks
    # 20 vCPU threads over 2 host CPUs: every vCPU waited, and its steal clock says so.
    assert all(ns > 0 for ns in steal.values()), steal
    for v in result.vcpus:
        assert v.instructions > 0 and v.st_baseline_ns is not None, v
        assert steal[v.vcpu] <= v.record_steal_ns, (v, steal[v.vcpu])
