"""`pvtime sweep`: the plan, the Student-t interval, the aggregate, and sweeps on dask.distributed -- a
LocalCluster of two worker processes, and a scheduler and worker started apart (all on 127.0.0.1) --
whose every run gives exactly the files of the `pvtime run` it stands for."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from pvtime.cli import main
from pvtime.cli.exits import EXIT_TOOL_ERROR
from pvtime.cli.params import Seeds
from pvtime.sim.overrides import parse_assignment
from pvtime.sim.sweep import (
    METRICS, Outcome, SweepRun, aggregate, connect, execute, folder_names, mean_interval, plan, t_quantile,
)

ROOT = Path(__file__).resolve().parents[2]

# Seed-dependent steal: two vCPUs on one host CPU, with random busy and idle periods.
SCENARIO = """\
name = "sw"
duration_ms = 30
seed = 1

[[host]]
name = "h"
cpus = 1

[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 3000], idle_us = [0, 3000] }
vmm_thread = { period_us = 1000, burst_us = 100 }
"""


def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "sw.toml"
    path.write_text(SCENARIO)
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def same_files_as_pvtime_run(folder: Path, scenario: Path, run_args: list[str], tmp_path: Path) -> None:
    """`folder` holds exactly the files `pvtime run scenario *run_args` writes (provenance.json apart)."""
    alone = tmp_path / f"alone-{folder.name}"
    res = invoke("run", str(scenario), "--no-progress", "--quiet", "--out", str(alone), *run_args)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in alone.iterdir())
    assert names == sorted(p.name for p in folder.iterdir()) and "provenance.json" in names
    for name in names:
        if name != "provenance.json":
            assert (folder / name).read_bytes() == (alone / name).read_bytes(), (folder.name, name)


# --- the plan and the statistics ------------------------------------------------------------------


def test_the_plan_is_every_setting_with_every_seed() -> None:
    axes = [parse_assignment("vm.a.vcpus=1,2", many=True), parse_assignment("host.h.sched.policy=eevdf,cfs", many=True)]
    runs = plan([7, 9], axes)
    assert [(r.seed, *(o.value for o in r.settings)) for r in runs] == [
        (7, 1, "eevdf"), (9, 1, "eevdf"), (7, 1, "cfs"), (9, 1, "cfs"),
        (7, 2, "eevdf"), (9, 2, "eevdf"), (7, 2, "cfs"), (9, 2, "cfs")]
    assert [r.index for r in runs] == list(range(8))
    first = runs[0]
    assert [o.origin for o in first.overrides] == ["--seed 7", "--set vm.a.vcpus=1", "--set host.h.sched.policy=eevdf"]
    assert first.params == {"vm.a.vcpus": 1, "host.h.sched.policy": "eevdf", "seed": 7}
    assert first.pvtime_run("my file.toml") == ("pvtime run 'my file.toml' --seed 7 --set vm.a.vcpus=1 "
                                                "--set host.h.sched.policy=eevdf")
    assert folder_names(runs)[:2] == ["vm.a.vcpus=1,host.h.sched.policy=eevdf,seed=7",
                                      "vm.a.vcpus=1,host.h.sched.policy=eevdf,seed=9"]
    # values that write the same safe name keep apart
    odd = plan([1], [parse_assignment('description="a/b","a:b"', many=True)])
    assert folder_names(odd) == ["description=_a_b_,seed=1~0", "description=_a_b_,seed=1~1"]


def test_seeds_are_ranges_and_lists() -> None:
    seeds = Seeds()
    assert seeds.convert("1-4,10", None, None) == (1, 2, 3, 4, 10)
    assert seeds.convert("1e1-12", None, None) == (10, 11, 12) and seeds.convert("-3", None, None) == (-3,)
    for bad, message in (("4-1", "is empty"), ("1-3,2", "seed 2 given twice"), ("x", "is not an integer"),
                         ("1-2e6", "more than 1,000,000 seeds")):
        with pytest.raises(click.BadParameter, match=message):
            seeds.convert(bad, None, None)


@pytest.mark.parametrize("df, t", [(3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042), (100, 1.984)])
def test_t_quantile_matches_the_printed_table(df: int, t: float) -> None:
    """Student's t, 97.5 % quantile, as statistics tables print it (three decimals)."""
    assert round(t_quantile(0.975, df), 3) == t


def test_t_quantile_in_closed_form() -> None:
    # df = 1 is the Cauchy distribution: t = tan(pi (p - 1/2)); df = 2: t = (2p - 1) sqrt(2 / (1 - (2p - 1)^2))
    for p in (0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        a = 2 * p - 1
        assert t_quantile(p, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-12)
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert round(t_quantile(0.975, 1000), 3) == 1.962  # tables' last row before the normal quantile, 1.960
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_interval_by_hand() -> None:
    i = mean_interval([1.0, 2.0, 6.0])
    # mean 3, s^2 = (4 + 1 + 9) / 2 = 7, t(0.975, 2) = 4.302653 (printed tables: 4.303)
    half = 4.302652729749464 * math.sqrt(7) / math.sqrt(3)
    assert (i.n, i.mean) == (3, 3.0) and i.std == pytest.approx(math.sqrt(7))
    assert i.low == pytest.approx(3 - half) and i.high == pytest.approx(3 + half) and i.half_width == pytest.approx(half)
    assert mean_interval([5.0]).mean == 5.0 and mean_interval([5.0]).low is None
    assert mean_interval([]).n == 0 and mean_interval([]).mean is None


def test_aggregate_averages_a_runs_vcpus_then_the_runs() -> None:
    def row(vcpus: int, seed: int, vm: str, delay_ms: float, record: int | None) -> dict[str, Any]:
        return {"vm.a.vcpus": vcpus, "seed": seed, "run": f"{vcpus}-{seed}", "vm": vm,
                "host_run_delay_ns": int(delay_ms * 1e6), "record_steal_ns": record, "timeslices": 1,
                "steal_pct": None, "guest_steal_ns": None, "host_steal_pct": None}

    rows = [row(2, 1, "a", 1, None), row(2, 1, "a", 3, 4_000_000), row(2, 1, "b", 10, None),
            row(2, 2, "a", 4, None), row(2, 2, "a", 4, None),
            row(2, 3, "a", 8, None), row(2, 3, "a", 10, 2_000_000),
            row(4, 1, "a", 7, None)]
    got = {(a.group, a.metric.name): a.interval for a in aggregate(rows, ["vm.a.vcpus", "vm"], METRICS)}
    # vcpus=2, VM a: per run (1+3)/2 = 2, 4, (8+10)/2 = 9 -> mean 5, s^2 = (9 + 1 + 16) / 2 = 13
    delay = got[((("vm.a.vcpus", 2), ("vm", "a")), "host_run_delay_ms")]
    half = 4.302652729749464 * math.sqrt(13 / 3)
    assert (delay.n, delay.mean) == (3, pytest.approx(5.0)) and delay.half_width == pytest.approx(half)
    # the record is known in two runs only (a vCPU without one is left out of its run's mean)
    record = got[((("vm.a.vcpus", 2), ("vm", "a")), "record_steal_ms")]
    assert (record.n, record.mean) == (2, pytest.approx(3.0))
    assert record.half_width == pytest.approx(12.706204736174698 * math.sqrt(2) / math.sqrt(2))
    assert got[((("vm.a.vcpus", 2), ("vm", "b")), "host_run_delay_ms")].n == 1
    assert got[((("vm.a.vcpus", 4), ("vm", "a")), "host_run_delay_ms")].mean == pytest.approx(7.0)
    assert got[((("vm.a.vcpus", 4), ("vm", "a")), "steal_pct")].n == 0


# --- sweeps on dask.distributed -------------------------------------------------------------------


def test_a_sweep_on_a_local_cluster_gives_the_results_of_pvtime_run(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    out = tmp_path / "sweep"
    res = invoke("sweep", str(path), "--seeds", "1-2", "--set", "vm.a.vcpus=1,2", "--workers", "2",
                 "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "sweep of sw" in res.stdout and "host steal %" in res.stdout
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["vm.a.vcpus=1,seed=1", "vm.a.vcpus=1,seed=2", "vm.a.vcpus=2,seed=1", "vm.a.vcpus=2,seed=2"]
    for vcpus in (1, 2):
        for seed in (1, 2):
            same_files_as_pvtime_run(out / "runs" / f"vm.a.vcpus={vcpus},seed={seed}", path,
                                     ["--seed", str(seed), "--set", f"vm.a.vcpus={vcpus}"], tmp_path)
    table = pq.read_table(out / "vcpus.parquet").to_pylist()
    assert [(r["vm.a.vcpus"], r["seed"], r["vcpu"]) for r in table] == [
        (1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 1, 1), (2, 2, 0), (2, 2, 1)]
    summary = json.loads((out / "runs" / "vm.a.vcpus=2,seed=2" / "summary.json").read_text())
    assert table[4]["host_run_delay_ns"] == summary["vcpus"][0]["host_run_delay_ns"] and table[4]["vm"] == "a"
    assert table[4]["host_steal_pct"] == pytest.approx(100 * table[4]["host_run_delay_ns"] / table[4]["elapsed_ns"])
    # the aggregate, by hand: two seeds, each run's mean over its vCPUs, t(0.975, 1) = tan(0.475 pi)
    per_run = [sum(r["host_run_delay_ns"] for r in table if r["vm.a.vcpus"] == 2 and r["seed"] == s) / 2e6
               for s in (1, 2)]
    assert per_run[0] != per_run[1]  # the seed matters here
    mean, sd = sum(per_run) / 2, abs(per_run[0] - per_run[1]) / math.sqrt(2)
    half = 12.706204736174698 * sd / math.sqrt(2)
    agg = {(r["vm.a.vcpus"], r["metric"]): r for r in pq.read_table(out / "aggregate.parquet").to_pylist()}
    got = agg[(2, "host_run_delay_ms")]
    assert got["n"] == 2 and got["mean"] == pytest.approx(mean)
    assert (got["ci95_low"], got["ci95_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert (out / "aggregate.csv").read_text().splitlines()[0] == \
        "vm.a.vcpus,vm,metric,n,mean,std,ci95_low,ci95_high"
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["failed"] == 0 and doc["axes"] == {"vm.a.vcpus": ["1", "2"]} and doc["seeds"] == [1, 2]
    assert doc["runs"][3]["pvtime_run"] == f"pvtime run {path} --seed 2 --set vm.a.vcpus=2"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["sweep"]["scheduler"] == "LocalCluster of 2 processes"


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dask scheduler and one worker process started apart from pvtime, as an administrator
    would, on 127.0.0.1 and a port of the system's choosing; the worker can import the tests."""
    folder = tmp_path_factory.mktemp("dask")
    address_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    dask = [sys.executable, "-m", "dask"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log: str) -> None:
        with (folder / log).open("wb") as f:
            procs.append(subprocess.Popen([*dask, *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                          start_new_session=True))

    try:
        # --idle-timeout: a scheduler that outlives a crashed test process goes away by itself
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--idle-timeout", "300",
              "--scheduler-file", str(address_file), log="scheduler.log")
        deadline = time.monotonic() + 90
        while not address_file.is_file() or not address_file.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, (folder / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        start("worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
              "--death-timeout", "60", log="worker.log")
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=90)
        yield address
    finally:
        for proc in reversed(procs):  # the worker first, then the scheduler: each with its process group
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def test_a_sweep_on_a_separate_scheduler_reports_failed_runs_and_completes_the_others(
        tmp_path: Path, scheduler: str) -> None:
    """burst_us = 0 is a scenario error (the run is not sent); 5000 us of VMM work every 1000 us
    is refused by the host when the run builds it (on the worker); 100 runs."""
    path = scenario_file(tmp_path)
    out = tmp_path / "sweep"
    res = invoke("sweep", str(path), "--seeds", "1-2", "--set", "vm.a.vmm_thread.burst_us=100,5000,0",
                 "--scheduler", scheduler, "--out", str(out), "--json")
    assert res.exit_code == EXIT_TOOL_ERROR, res.output
    answer = json.loads(res.stdout)
    assert answer["exit_code"] == EXIT_TOOL_ERROR and answer["error"].startswith("4 of 6 runs failed")
    failed = {f["run"]: f["error"] for f in answer["failed"]}
    assert sorted(failed) == ["vm.a.vmm_thread.burst_us=0 seed=1", "vm.a.vmm_thread.burst_us=0 seed=2",
                              "vm.a.vmm_thread.burst_us=5000 seed=1", "vm.a.vmm_thread.burst_us=5000 seed=2"]
    assert failed["vm.a.vmm_thread.burst_us=0 seed=1"] == ("--set vm.a.vmm_thread.burst_us=0: "
                                                            "vm[0].vmm_thread.burst_us: Input should be greater than 0")
    assert "burst" in failed["vm.a.vmm_thread.burst_us=5000 seed=2"]
    assert "pvtime: run vm.a.vmm_thread.burst_us=5000 seed=1 failed: " in res.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["vm.a.vmm_thread.burst_us=100,seed=1",
                                                                "vm.a.vmm_thread.burst_us=100,seed=2"]
    same_files_as_pvtime_run(out / "runs" / "vm.a.vmm_thread.burst_us=100,seed=2", path,
                             ["--seed", "2", "--set", "vm.a.vmm_thread.burst_us=100"], tmp_path)
    status = {r["run"]: r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert list(status.values()) == ["done", "done", "failed", "failed", "failed", "failed"]
    assert {r["vm.a.vmm_thread.burst_us"] for r in pq.read_table(out / "vcpus.parquet").to_pylist()} == {100}
    assert {(a["vm.a.vmm_thread.burst_us"], a["n"]) for a in answer["aggregate"]} == {(100, 2)}
    assert json.loads((out / "provenance.json").read_text())["sweep"]["scheduler"] == scheduler


def fails_for_seed_2(run: SweepRun) -> str:
    """A task for the workers (they import this module): seed 2 fails."""
    if run.seed == 2:
        raise RuntimeError("seed 2 is refused")
    from distributed import get_worker

    return get_worker().address


def test_a_task_that_raises_on_a_worker_is_an_outcome(scheduler: str) -> None:
    outcomes: list[Outcome[str]] = []
    with connect(scheduler) as client:
        execute(client, plan([1, 2, 3], []), fails_for_seed_2, outcomes.append)
    by_seed = {o.run.seed: o for o in outcomes}
    assert sorted(by_seed) == [1, 2, 3]
    assert by_seed[2].value is None and by_seed[2].error == "RuntimeError: seed 2 is refused"
    assert by_seed[2].detail is not None and "fails_for_seed_2" in by_seed[2].detail
    for seed in (1, 3):
        assert by_seed[seed].error is None and str(by_seed[seed].value).startswith("tcp://127.0.0.1:")


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = invoke("sweep", str(scenario_file(tmp_path)), "--seeds", "1", "--scheduler", f"tcp://127.0.0.1:{port}",
                 "--connect-timeout", "1", "--out", str(tmp_path / "x"), "--no-progress")
    assert res.exit_code == EXIT_TOOL_ERROR
    assert f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in res.output
    assert not (tmp_path / "x").exists()  # nothing claimed before the cluster answers


def test_sweep_usage_errors(tmp_path: Path) -> None:
    path = str(scenario_file(tmp_path))
    out = ["--out", str(tmp_path / "x")]
    twice = invoke("sweep", path, "--seeds", "1", "--set", "seed=1,2", *out)
    assert twice.exit_code == 2 and "the seed is swept by --seeds" in twice.output
    both = invoke("sweep", path, "--seeds", "1", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", *out)
    assert both.exit_code == 2 and "--workers starts a local cluster" in both.output
    none = invoke("sweep", path, "--seeds", "1-2", "--set", "vm.b.vcpus=1,2", *out)
    assert none.exit_code == EXIT_TOOL_ERROR
    assert "no run of the sweep can run:\n--set vm.b.vcpus=1: vm: no element named 'b' (names: a)" in none.output
    assert not (tmp_path / "x").exists()
