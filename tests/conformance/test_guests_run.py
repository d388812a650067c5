"""The C guest programs (guests/, shipped in pvtime/images) on the unicorn backend under the hypervisor.

- the conformance guest passes on 4 vCPUs over 1 host CPU with nothing skipped (PV time is
  offered, and the vCPUs contend for the CPU);
- the mini kernel's steal equals the host's run_delay growth of each vCPU thread since that
  vCPU's PV_TIME_ST (which zeroes the record and moves KVM's baseline);
- the same run twice gives the same console output and counters.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from pathlib import Path

import pytest

from pvtime.sim.guest_run import GuestRunOptions, GuestRunResult, run_guest
from pvtime.vmm.images import patch_minikernel

IMAGES = Path(str(files("pvtime") / "images"))
GUESTS = Path(__file__).resolve().parents[2] / "guests"
NSEC_PER_USER_HZ = 10_000_000


@cache
def image(name: str) -> bytes:
    """The shipped image, or (until it ships) a build of guests/ with zig cc."""
    shipped = IMAGES / f"{name}.elf"
    if shipped.exists():
        return shipped.read_bytes()
    build = GUESTS / "build.py"
    if not build.exists():
        pytest.skip(f"no {name}.elf shipped and no guests/ sources to build it")
    import subprocess
    import sys
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="pvtime-images-"))
    subprocess.run([sys.executable, str(build), name, "--out-dir", str(out)], check=True, capture_output=True)
    return (out / f"{name}.elf").read_bytes()


def test_conformance_guest_passes_on_4_vcpus_over_1_host_cpu_with_nothing_skipped() -> None:
    result = run_guest(image("conformance"), GuestRunOptions(vcpus=4, host_cpus=1))
    console = result.console.decode()
    assert result.errors == [] and result.exit_status == 0, console + str(result.stopped)
    summary = re.search(r"^SUMMARY: (\d+) tests, 0 unexpected failures, 0 skipped$", console, re.M)
    assert summary is not None, console
    verdicts = re.findall(r"^(PASS|FAIL|SKIP): ", console, re.M)
    assert verdicts == ["PASS"] * int(summary[1]), console
    assert "PASS: steal: time kept from running shows up in stolen_time" in console
    # 4 vCPU threads over 1 CPU wait for each other: the guest saw steal, and the records say it.
    assert any(v.host_steal_ns for v in result.vcpus)
    for v in result.vcpus:
        assert v.record_steal_ns == v.host_steal_ns


@cache
def minikernel_run(vcpus: int = 3, host_cpus: int = 1) -> GuestRunResult:
    data = patch_minikernel(image("minikernel"), duration_ms=300, busy_ms=30, idle_ms=20)
    # 100 MIPS keeps the run short in wall time; the guest's arithmetic does not depend on it.
    return run_guest(data, GuestRunOptions(vcpus=vcpus, host_cpus=host_cpus, instructions_per_sec=100_000_000))


def _parse(console: str) -> tuple[dict[int, list[int]], dict[int, int]]:
    stat = {int(m[1]): [int(x) for x in m[2].split()] for m in re.finditer(r"^cpu(\d+) ([\d ]+)$", console, re.M)}
    steal = {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", console, re.M)}
    return stat, steal


def test_minikernel_steal_equals_host_run_delay_growth() -> None:
    result = minikernel_run()
    console = result.console.decode()
    assert result.exit_status == 0, console + str(result.stopped)
    stat, steal = _parse(console)
    assert sorted(steal) == sorted(stat) == [0, 1, 2]
    for v in result.vcpus:
        guest_ns = steal[v.vcpu]
        assert guest_ns > 0  # 3 vCPUs on 1 host CPU: every vCPU waited
        # /proc/stat's steal is the same time in USER_HZ (the 8th number of the cpu line).
        assert stat[v.vcpu][7] == guest_ns // NSEC_PER_USER_HZ
        # The guest reads its steal clock at each tick; the record holds run_delay growth since
        # PV_TIME_ST as of the vCPU's latest schedule-in. So the guest's total is exactly the
        # host's growth at one of the vCPU's schedule-ins ...
        assert guest_ns in v.steal_at_loads
        # ... the latest one before its last tick: at most the few waits of its final moments
        # (after the workload, before the VM ends) are not in it.
        assert v.host_steal_ns is not None and 0 <= v.host_steal_ns - guest_ns
        later = [s for s in v.steal_at_loads if s > guest_ns]
        assert len(later) <= 3, (guest_ns, v.steal_at_loads[-6:])
    # The aggregate line is the per-CPU sum, converted once.
    agg = re.search(r"^cpu  ([\d ]+)$", console, re.M)
    assert agg is not None and int(agg[1].split()[7]) == sum(steal.values()) // NSEC_PER_USER_HZ


def test_minikernel_without_contention_sees_no_steal() -> None:
    result = minikernel_run(vcpus=2, host_cpus=2)
    assert result.exit_status == 0
    _, steal = _parse(result.console.decode())
    assert steal == {0: 0, 1: 0}


def test_same_run_twice_gives_identical_console_and_counters() -> None:
    first = minikernel_run()
    data = patch_minikernel(image("minikernel"), duration_ms=300, busy_ms=30, idle_ms=20)
    second = run_guest(data, GuestRunOptions(vcpus=3, host_cpus=1, instructions_per_sec=100_000_000))
    assert second.console == first.console
    assert second.virtual_ns == first.virtual_ns
    assert [(v.instructions, v.run_delay_ns, v.record_steal_ns) for v in second.vcpus] == \
        [(v.instructions, v.run_delay_ns, v.record_steal_ns) for v in first.vcpus]
