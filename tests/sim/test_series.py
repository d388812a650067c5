"""The steal series are right at every sample, not only at the end.

- For every vCPU of every embedded scenario, migrated ones included, the series' value at a sample
  time is what the same run, stopped at that time, reports (`run(..., stop_at_ns=...)`): before,
  between and after each migration, and after an ELF guest prints its steal -- also at sample
  times inside a scheduler segment, which the run does not stop at.
- The host's truth counts a wait as it passes (schedstat's run_delay adds it only at the next
  arrival, kernel/sched/stats.h: sched_info_arrive), so its rate never exceeds 100 % of a sample
  interval; the record steps at each vCPU load (arch/arm64/kvm/pvtime.c: kvm_update_stolen_time).
- Gaps are explicit (masked, null in the files), and a second PV_TIME_ST, which zeroes the record
  and moves KVM's baseline, is marked by `pv_time_st_calls`.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pvtime.guest import kernel as kernel_mod
from pvtime.report import write_results
from pvtime.sim import scenario
from pvtime.sim.recorder import STEAL_COLUMNS
from pvtime.sim.results import RunResult, VcpuRow
from pvtime.sim.runner import run
from tests.sim.shortened import shortened

MS = 1_000_000


@cache
def whole(name: str, sample_ms: int | None = None) -> RunResult:
    return run(shortened(name, sample_ms))


def check_times(sc: scenario.Scenario) -> list[int]:
    """Sample times to stop at: the first, around each migration (before it, and once the VM
    runs on its destination), the middle and the end."""
    spec = sc.spec
    sample, end = spec.sample_ms * MS, spec.duration_ms * MS
    grid = [*range(0, end, sample), end]
    times = {grid[1], grid[len(grid) // 2], end}
    for m in spec.migration:
        at = m.at_ms * MS
        times.add(max(t for t in grid if t <= at))
        times.update([t for t in grid if t >= at + 2 * sample][:1])
    return sorted(times)


def assert_sample_is_the_stopped_report(series: dict[str, np.ndarray], i: int, row: VcpuRow) -> None:
    """Sample i of a vCPU's series against that vCPU's row in a run stopped at that sample."""
    where = f"{row.vm}/{row.vcpu} at sample {i}"
    assert series["host"][i] == row.host, where
    assert series["pv_time_st_calls"][i] == row.pv_time_st_calls, where
    values = {c: (None if series[c][i] is np.ma.masked else int(series[c][i])) for c in STEAL_COLUMNS}
    if row.first_run_ns is None:  # not run yet: no value at all
        assert values == dict.fromkeys(STEAL_COLUMNS), where
        return
    assert values["host_wait_ns"] == row.host_wait_ns, where
    assert values["host_run_delay_ns"] == row.host_run_delay_ns, where
    # The record is a gap without PV time and before the guest's first PV_TIME_ST.
    assert values["record_steal_ns"] == (row.record_steal_ns if row.pv_time_st_calls else None), where
    assert values["guest_steal_ns"] == row.guest_steal_ns, where


# The scenario's own interval, and 5 ms: not a multiple of the 4 ms host tick, so most samples
# fall inside a scheduler segment, where guest code has run past the sample when the event loop
# reaches it.
@pytest.mark.parametrize("sample_ms", [None, 5])
@pytest.mark.parametrize("name", scenario.embedded_names())
def test_every_sample_is_what_a_run_stopped_there_reports(name: str, sample_ms: int | None) -> None:
    sc = shortened(name, sample_ms)
    full = whole(name, sample_ms)
    times = check_times(sc)
    migrated = {m.vm for m in sc.spec.migration}
    checked_migrated_on = set()
    for t in times:
        stopped = run(sc, stop_at_ns=t)
        assert stopped.duration_ns == t and int(stopped.grid_ns[-1]) == t
        i = int(np.searchsorted(full.grid_ns, t))
        assert int(full.grid_ns[i]) == t
        assert [(r.vm, r.vcpu) for r in stopped.vcpus] == [(r.vm, r.vcpu) for r in full.vcpus]
        for row in stopped.vcpus:
            assert_sample_is_the_stopped_report(full.series[f"{row.vm}/vcpu{row.vcpu}"], i, row)
            if row.vm in migrated:
                checked_migrated_on.add(row.host)
        # the stopped run's own series ends with the same values
        for key, cols in stopped.series.items():
            for c in STEAL_COLUMNS:
                assert np.ma.allequal(cols[c], full.series[key][c][: i + 1], fill_value=True), (key, c)
    for m in sc.spec.migration:  # the check saw each migrated VM on each of its hosts
        assert m.to in checked_migrated_on, (m, checked_migrated_on)


def test_an_elf_guests_printed_steal_is_in_the_series_of_each_of_its_vcpus() -> None:
    # The default scenario's minikernel prints both CPUs' steal from CPU 0 after CPU 1 went off
    # (PSCI CPU_OFF): the series reads the console at every sample, not only when that vCPU runs.
    r = whole("default")
    mini = [row for row in r.vcpus if row.guest == "elf"]
    assert mini and all(row.guest_steal_ns is not None for row in mini)
    for row in mini:
        guest = r.series[f"{row.vm}/vcpu{row.vcpu}"]["guest_steal_ns"]
        assert guest[-1] == row.guest_steal_ns
        printed = ~np.ma.getmaskarray(guest)
        first = int(np.argmax(printed))
        assert first > 0 and printed[first:].all()  # unknown (null) until it prints, then known


def rates_within_intervals(result: RunResult, column: str) -> list[float]:
    """Each vCPU's growth of `column` over each sample interval, as a share of the interval
    (intervals where PV_TIME_ST restarted the count or a value is missing left out)."""
    shares = []
    dt = np.diff(result.grid_ns)
    for cols in result.series.values():
        v, calls = cols[column], cols["pv_time_st_calls"]
        ok = ~(np.ma.getmaskarray(v)[1:] | np.ma.getmaskarray(v)[:-1]) & (np.diff(calls) == 0)
        growth = np.diff(np.ma.getdata(v))
        shares += list((growth[ok] / dt[ok]).tolist())
    return shares


# Three busy vCPUs on one CPU, sampled every ms: each waits two of every three slices.
CONTENDED = """
name = "contended"
duration_ms = 200
sample_ms = 1
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "a"
host = "h"
vcpus = 3
guest = { kind = "model", busy_us = [5000, 5000], idle_us = [0, 0] }
"""


def test_the_host_truth_counts_each_wait_as_it_passes() -> None:
    r = run(scenario.parse(CONTENDED, "contended.toml"))
    waits = rates_within_intervals(r, "host_wait_ns")
    assert max(waits) == 1.0 and min(waits) == 0.0  # waiting a whole ms, running a whole ms
    # run_delay as schedstat keeps it grows by a whole wait at the arrival: the lump the
    # series showed before (several ms of steal in one ms)
    assert max(rates_within_intervals(r, "host_run_delay_ns")) > 2.0
    for row in r.vcpus:  # at the end both agree up to the wait in progress
        assert row.host_run_delay_ns <= row.host_wait_ns <= row.host_run_delay_ns + r.duration_ns


@pytest.mark.parametrize("name", scenario.embedded_names())
def test_no_truth_rate_exceeds_100_percent_in_any_interval(name: str) -> None:
    shares = rates_within_intervals(whole(name), "host_wait_ns")
    assert shares and 0.0 <= min(shares) and max(shares) <= 1.0


def test_the_record_steps_at_each_vcpu_load() -> None:
    # KVM adds the run_delay grown since its baseline at each vcpu_load: while a vCPU waits its
    # record stands still, and at every sample it equals the truth as of its latest entry.
    r = run(scenario.parse(CONTENDED, "contended.toml"))
    for key, cols in r.series.items():
        record, at_entry, wait = cols["record_steal_ns"], cols["host_run_delay_ns"], cols["host_wait_ns"]
        known = ~np.ma.getmaskarray(record)  # from the guest's PV_TIME_ST on
        assert known[-1] and known[int(np.argmax(known)):].all(), key
        assert (record[known] == at_entry[known]).all() and (record[known] <= wait[known]).all(), key
        waited_whole_ms = np.flatnonzero(np.diff(np.ma.getdata(wait)) == MS)
        assert len(waited_whole_ms) > 50, key
        frozen = np.diff(np.ma.getdata(record))[waited_whole_ms]
        assert (frozen == 0).all(), key


def test_a_second_pv_time_st_is_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guest takes CPU 1 offline and back online at its 20th tick: the online callback calls
    # PV_TIME_ST again, which zeroes the record and moves KVM's baseline (as db/1's first call
    # moves the count from its first vcpu_load): the cumulative columns restart from 0.
    real_irq = kernel_mod.ModelKernel.irq
    replugged: list[int] = []

    def irq(self, cpu, index):
        if index == 1 and self.tick_count.get(1, 0) == 20 and not replugged:
            replugged.append(index)
            self.cpu_down(1)
            assert self.cpu_up(cpu, 1)
        return real_irq(self, cpu, index)

    monkeypatch.setattr(kernel_mod.ModelKernel, "irq", irq)
    r = run(scenario.parse(CONTENDED.replace("vcpus = 3", "vcpus = 2") + '[[noise]]\nname = "hog"\nhost = "h"\n',
                           "replug.toml"))
    cols = r.series["a/vcpu1"]
    calls = cols["pv_time_st_calls"]
    assert calls[0] == 0 and calls[-1] == 2 and (np.diff(calls) >= 0).all()
    i = int(np.argmax(calls == 2))
    for c in ("host_wait_ns", "host_run_delay_ns", "record_steal_ns"):
        assert cols[c][i] < cols[c][i - 1], c  # restarted: marked by the count, not silent
    row = next(row for row in r.vcpus if row.vcpu == 1)
    assert row.pv_time_st_calls == 2 and row.record_steal_ns == row.host_run_delay_ns


def test_gaps_are_null_in_the_files(tmp_path: Path) -> None:
    r = whole("default")
    write_results(r, tmp_path)
    with (tmp_path / "series.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["time_ns", "host", "vm", "vcpu", "pv_time_st_calls", *STEAL_COLUMNS]
    assert all(v != "-1" for row in rows for v in row.values())
    at0 = [row for row in rows if row["time_ns"] == "0"]
    assert at0 and all(row[c] == "" for row in at0 for c in STEAL_COLUMNS)  # nothing has run at 0
    legacy = [row for row in rows if row["vm"] == "legacy" and row["time_ns"] != "0"]
    assert legacy and all(row["record_steal_ns"] == "" and row["host_wait_ns"] != "" for row in legacy)
    hosts = {row["host"] for row in rows if row["vm"] == "web"}
    assert hosts == {"host0", "host1"}
    table = pq.read_table(tmp_path / "series.parquet")
    assert table.num_rows == len(rows)
    assert str(table.schema.field("record_steal_ns").type) == "int64"
    record = table.column("record_steal_ns").to_pylist()
    assert record.count(None) == sum(1 for row in rows if row["record_steal_ns"] == "")
