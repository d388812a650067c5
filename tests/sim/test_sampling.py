"""Observing a run does not change it: the sample interval and where the event loop is stopped
(a progress display) are observation only.

A sample used to stop every scheduler segment: a decision point Linux does not have, where a
reschedule requested mid-segment (kernel/sched/fair.c: update_curr -> resched_curr_lazy, from a
load balancer's detach_task on a busy CPU) acted earlier than it otherwise would, so the default
scenario's steal changed with `sample_ms`. Now each vCPU notes what it does as it runs and the
series are read from the notes afterwards.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from pvtime.host import EventLoop
from pvtime.sim import scenario
from pvtime.sim.build import build
from pvtime.sim.collect import collect
from pvtime.sim.observe import console_steal
from pvtime.sim.recorder import STEAL_COLUMNS
from pvtime.sim.results import RunResult
from pvtime.sim.runner import run
from tests.sim.shortened import shortened

MS = 1_000_000
SAMPLES_MS = (1, 5, 10, 20)  # 5 and 10 are not multiples of the 4 ms host tick; 1 ms splits every segment


@cache
def sampled(name: str, sample_ms: int) -> RunResult:
    return run(shortened(name, sample_ms))


def simulated(r: RunResult) -> tuple[object, ...]:
    """Everything a run reports that does not depend on how it was sampled."""
    migrations = [m.to_dict() for m in r.migrations]
    clocks = {vm: c.to_dict() for vm, c in r.clocks.items()}
    trace = list(r.trace_events)
    return (r.vcpus, r.tasks, r.vms, migrations, clocks, r.stats, trace)


def at_times(r: RunResult, times: list[int]) -> dict[str, dict[str, list[object]]]:
    """Each vCPU's series at `times` (all on its grid), masked values as None."""
    idx = [int(np.searchsorted(r.grid_ns, t)) for t in times]
    assert [int(r.grid_ns[i]) for i in idx] == times
    out: dict[str, dict[str, list[object]]] = {}
    for key, cols in r.series.items():
        out[key] = {c: [None if cols[c][i] is np.ma.masked else cols[c][i] for i in idx]
                    for c in ("host", "pv_time_st_calls", *STEAL_COLUMNS)}
    return out


def test_some_embedded_scenario_has_reschedules_a_stop_would_have_moved() -> None:
    # what made the old loop's stops change results: without one, the test below proves little
    assert any(sampled(name, max(SAMPLES_MS)).stats["late_reschedules"] > 0 for name in scenario.embedded_names())


@pytest.mark.parametrize("name", scenario.embedded_names())
def test_the_sample_interval_changes_nothing_but_the_grid(name: str) -> None:
    runs = {ms: sampled(name, ms) for ms in SAMPLES_MS}
    reference = runs[max(SAMPLES_MS)]
    end = reference.duration_ns
    common = [*range(0, end, max(SAMPLES_MS) * MS), end]  # every grid has these times
    for ms, r in runs.items():
        assert len(r.grid_ns) == -(-end // (ms * MS)) + 1
        # per vCPU: host run_delay, record, guest steal, timeslices, loads...; tasks' schedstat;
        # VMs, migrations, guest clocks; the scheduler's counts; every trace event
        assert simulated(r) == simulated(reference), f"sample_ms={ms}"
        assert at_times(r, common) == at_times(reference, common), f"sample_ms={ms}"
        # the same CPU time in coarser bins
        per_bin = max(SAMPLES_MS) // ms
        for cpu, occ in r.occupancy.items():
            whole = occ[:, : occ.shape[1] // per_bin * per_bin].reshape(occ.shape[0], -1, per_bin).sum(axis=2)
            assert (whole == reference.occupancy[cpu][:, : whole.shape[1]]).all(), (ms, cpu)


def test_where_the_event_loop_stops_changes_nothing() -> None:
    sc = shortened("default", 5)
    seen: list[int] = []
    shown = run(sc, lambda now, total: seen.append(now))
    assert len(seen) > 100 and seen[-1] == shown.duration_ns  # stopped at every progress report
    quiet = sampled("default", 5)  # no progress: one run to the end
    assert simulated(shown) == simulated(quiet)
    assert at_times(shown, list(quiet.grid_ns)) == at_times(quiet, list(quiet.grid_ns))


def test_what_the_vcpus_noted_is_what_the_vms_show_at_the_end() -> None:
    # The series and summary are read from the vCPUs' notes; at the end they must agree with the
    # VMs themselves: the record in guest RAM, the guest's cpustat or console, the tasks' schedstat.
    sc = shortened("default", 5)
    core = EventLoop()
    world = build(sc, core)
    end = world.duration_ns
    core.run(end)
    for s in world.scheds.values():
        s.finish()
    result = collect(world, end)
    rows = {(r.vm, r.vcpu): r for r in result.vcpus}
    checked_model = checked_elf = 0
    for vm in world.vms:
        for thread in vm.threads:
            cpu = thread.vcpu.id
            row = rows[(vm.spec.name, cpu)]
            live_record = vm.machine.stolen_time(cpu) if vm.spec.pvtime else None
            assert row.record_steal_ns == live_record, row
            if vm.kernel is not None:
                assert row.guest_steal_ns == vm.kernel.ticks.stat(cpu).steal, row
                checked_model += 1
            else:
                live = console_steal(vm.state.console_stat(vm.machine), cpu)
                assert live is not None and row.guest_steal_ns == live, row
                checked_elf += 1
            if vm.spec.pvtime and vm.spec.name not in {m.vm for m in sc.spec.migration}:
                assert row.record_steal_ns == row.host_run_delay_ns, row  # the record is exact
            last = {c: result.series[f"{vm.spec.name}/vcpu{cpu}"][c][-1] for c in STEAL_COLUMNS}
            assert last["host_run_delay_ns"] == row.host_run_delay_ns and last["host_wait_ns"] == row.host_wait_ns
    assert checked_model and checked_elf
