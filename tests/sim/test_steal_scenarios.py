"""Analytic cases run through the whole stack: scenario -> scheduler -> KVM -> model guest."""

from __future__ import annotations

import pytest

from pvtime.sim import scenario
from pvtime.sim.runner import RunResult, run

MS = 1_000_000
TICK = 4 * MS  # the model guest's 250 Hz tick


def run_text(text: str) -> RunResult:
    return run(scenario.parse(text, "test.toml"))


BUSY = 'guest = { kind = "model", busy_us = [5000, 5000], idle_us = [0, 0] }'


def test_two_busy_vcpus_on_one_cpu_each_steal_half() -> None:
    r = run_text(f"""
name = "half"
duration_ms = 1000
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "a"
host = "h"
{BUSY}
[[vm]]
name = "b"
host = "h"
{BUSY}
""")
    slice_ns = 3 * MS  # 6 ms latency shared by two equal tasks
    for row in r.vcpus:
        assert abs(row.host_run_delay_ns - row.elapsed_ns // 2) <= 2 * slice_ns, row
        assert row.record_steal_ns == row.host_run_delay_ns
        assert 0 <= row.host_run_delay_ns - row.guest_steal_ns <= slice_ns + TICK
        assert row.steal_pct == pytest.approx(50, abs=1.5)


def test_a_pinned_vcpu_alone_has_no_steal() -> None:
    r = run_text(f"""
name = "alone"
duration_ms = 500
[[host]]
name = "h"
cpus = 2
[[vm]]
name = "a"
host = "h"
pin = [1]
{BUSY}
[[noise]]
name = "hogs"
host = "h"
count = 3
cpus = [0]
""")
    (row,) = r.vcpus
    assert row.host_run_delay_ns == 0 and row.record_steal_ns == 0 and row.guest_steal_ns == 0
    assert row.run_time_ns == 500 * MS


def test_a_vcpu_in_wfi_accrues_no_steal_while_blocked() -> None:
    # A mostly idle vCPU shares its CPU with a hog that always wants to run. While it sits in
    # WFI it is asleep, not waiting: only the short waits after its wake-ups can count.
    r = run_text("""
name = "wfi"
duration_ms = 1000
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "idle"
host = "h"
guest = { kind = "model", busy_us = [500, 500], idle_us = [20000, 20000] }
[[noise]]
name = "hog"
host = "h"
""")
    (row,) = r.vcpus
    asleep = row.elapsed_ns - row.run_time_ns - row.host_run_delay_ns
    assert asleep > 900 * MS  # most of the run was spent blocked in WFI ...
    # ... and none of it became steal: each wake-up waits at most for the hog's protected slice,
    # which the host notices at its next tick (EEVDF: update_curr from sched_tick, HZ=250).
    assert row.host_run_delay_ns <= row.timeslices * 4 * MS
    assert row.record_steal_ns == row.host_run_delay_ns


def test_guest_sees_the_host_truth_exactly_in_the_default_scenario() -> None:
    r = run(scenario.load("default").__class__(
        scenario.load("default").spec.model_copy(update={"duration_ms": 600}), "embedded:default"))
    pv = [row for row in r.vcpus if row.pvtime]
    assert pv and all(row.record_minus_host_ns == 0 for row in pv)
    assert all(row.host_run_delay_ns > 0 for row in r.vcpus)  # the default scenario steals
    for row in pv:
        if row.guest_steal_ns is None:  # the ELF guest prints its /proc/stat when it finishes
            assert row.guest == "elf" and row.guest_note is not None
            continue
        assert 0 <= row.host_run_delay_ns - row.guest_steal_ns  # ticks account it later, never more
    for row in r.vcpus:
        if not row.pvtime:
            assert row.guest_steal_ns == 0 and row.record_steal_ns is None


def test_a_guest_fault_stops_only_its_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    from pvtime.guest import kernel as kernel_mod

    real_irq = kernel_mod.ModelKernel.irq

    def irq(self, cpu, index):  # the "bad" VM's kernel reads an unmapped address on its 10th tick
        if self.options.hz == 100 and self.tick_count.get(index, 0) == 10:
            cpu.read(0x10, 8)
        return real_irq(self, cpu, index)

    monkeypatch.setattr(kernel_mod.ModelKernel, "irq", irq)
    r = run_text(f"""
name = "fault"
duration_ms = 300
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "bad"
host = "h"
guest = {{ kind = "model", hz = 100 }}
[[vm]]
name = "good"
host = "h"
{BUSY}
""")
    bad, good = r.vms
    assert bad.stopped is not None and "unmapped" in str(bad.stopped)
    assert good.stopped is None
    good_row = [row for row in r.vcpus if row.vm == "good"][0]
    assert good_row.run_time_ns > 200 * MS  # it got the CPU once the other VM was gone
