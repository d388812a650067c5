"""Sweeps: every combination of seeds and override values as an independent run on dask.distributed,
and the runs' per-vCPU figures aggregated over seeds (mean and a Student-t 95 % interval).

The plan (`plan`) is the product of the `--set` axes (outer, in the order given) and the seeds
(inner); each run is the run of the scenario with `seed` and the axes' values set
(`pvtime.sim.overrides`), exactly as `pvtime run FILE --seed K --set ...` runs it. `connect`
gives a client of a `LocalCluster` of worker processes (one thread each, dashboard off) or of an
existing cluster by its scheduler's address; `execute` runs a task per run there; a task that
fails is an outcome with its error, and the others go on. Nothing here reads results files: the caller's task does the run
and gives back what it keeps.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pvtime.sim.overrides import Override
from pvtime.sim.scenario import ScenarioError

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its place in the plan, its seed and the value of each axis."""

    index: int
    seed: int
    settings: tuple[Override, ...]  # one per --set axis, in the axes' order

    @property
    def overrides(self) -> tuple[Override, ...]:
        """What `pvtime run --seed K --set ...` sets for this run, in that order."""
        return (Override.of("seed", self.seed, f"--seed {self.seed}"), *self.settings)

    @property
    def params(self) -> dict[str, Any]:
        """The swept values by path, then the seed: the run's columns in the sweep's tables."""
        return {**{o.path: o.value for o in self.settings}, "seed": self.seed}

    @property
    def label(self) -> str:
        """The run as a person reads it: `vm.web.vcpus=4 seed=3`."""
        return " ".join([*(f"{o.path}={o.text}" for o in self.settings), f"seed={self.seed}"])

    def pvtime_run(self, scenario: str) -> str:
        """The `pvtime run` command (for a shell) that gives this run's results."""
        return " ".join(["pvtime run", _shell_word(scenario), f"--seed {self.seed}",
                         *(f"--set {_shell_word(f'{o.path}={o.text}')}" for o in self.settings)])


def plan(seeds: Sequence[int], axes: Sequence[Sequence[Override]]) -> list[SweepRun]:
    """Every combination: the axes' values (the first axis outermost), each with every seed."""
    runs: list[SweepRun] = []
    for settings in itertools.product(*axes):
        for seed in seeds:
            runs.append(SweepRun(len(runs), seed, tuple(settings)))
    return runs


def folder_names(runs: Sequence[SweepRun]) -> list[str]:
    """A folder name per run, from its values (`vm.web.vcpus=4,seed=3`), safe on any file system;
    two runs whose values write the same name get their index appended."""
    names = [",".join([*(f"{o.path}={_safe(o.text)}" for o in r.settings), f"seed={r.seed}"]) for r in runs]
    seen = {n: names.count(n) for n in names}
    return [n if seen[n] == 1 else f"{n}~{r.index}" for n, r in zip(names, runs)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:60]


def _shell_word(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9._+=,/:@-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# --- running on dask ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """How one run ended: its task's value, or the error that stopped it."""

    run: SweepRun
    value: T | None = None
    error: str | None = None  # one line
    detail: str | None = None  # the traceback of an unexpected exception


@contextmanager
def connect(scheduler: str | None = None, workers: int = 1, timeout_s: float = 30.0) -> Iterator[Client]:
    """A dask client: of an existing cluster, by its scheduler's address (tcp://HOST:8786), or of a
    `LocalCluster` of `workers` processes on 127.0.0.1, closed on leaving. Raises OSError or
    TimeoutError when the scheduler does not answer within `timeout_s`."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler, timeout=timeout_s, set_as_default=False) as client:
            yield client
        return
    # Worker processes (a simulation holds the GIL), one thread each; nothing listens beyond this
    # machine; no dashboard; the workers' log lines are for failures only.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def execute(client: Client, runs: Sequence[SweepRun], task: Callable[[SweepRun], T],
            on_done: Callable[[Outcome[T]], None]) -> None:
    """Run `task(run)` for every run on `client`'s cluster and call `on_done` with each outcome as
    it comes (in the order they finish); one run's failure does not stop the others.

    `task` is sent to the workers: a module-level function (or a partial of one) that they can
    import."""
    from distributed import as_completed

    pending = {client.submit(_guarded, task, run, pure=False): run for run in runs}
    for future in as_completed(pending, loop=client.loop):
        run = pending.pop(future)
        try:
            value, error, detail = future.result()
        except Exception as exc:  # the task never finished: its worker died, the cluster went away
            value, error, detail = None, f"{type(exc).__name__}: {exc}".strip(), None
        future.release()
        on_done(Outcome(run, value, error, detail))


def _guarded(task: Callable[[SweepRun], T], run: SweepRun) -> tuple[T | None, str | None, str | None]:
    """`task(run)` on a worker, its failure made a value: an exception need not unpickle on the client."""
    try:
        return task(run), None, None
    except ScenarioError as exc:
        return None, str(exc).replace("\n", "; "), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}".replace("\n", "; "), traceback.format_exc()


# --- aggregation over seeds -----------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """The p quantile (p in (0.5, 1)) of Student's t distribution with `df` degrees of freedom:
    the t at which the two-sided probability P(|T| < t) is 2p - 1, found by bisection on the
    closed form of that probability for integer df (Abramowitz and Stegun 26.7.3 and 26.7.4)."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    target = 2 * p - 1
    hi = 1.0
    while _t_inside(hi, df) < target:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _t_inside(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _t_inside(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df` (A&S 26.7.3 for odd df, 26.7.4 for even)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)  # cos(theta) (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)
        for j in range((df - 1) // 2):
            total += term
            term *= c2 * (2 * j + 2) / (2 * j + 3)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    total, term = 0.0, 1.0  # 1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...
    for j in range(df // 2):
        total += term
        term *= c2 * (2 * j + 1) / (2 * j + 2)
    return math.sin(theta) * total


@dataclass(frozen=True)
class Interval:
    """The mean of n samples and its Student-t confidence interval (None where n is too small)."""

    n: int
    mean: float | None
    std: float | None  # the sample standard deviation (n - 1 in the denominator)
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean +- t(1 - (1 - level) / 2, n - 1) * s / sqrt(n)."""
    n = len(values)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Metric:
    """A per-vCPU figure the aggregate table summarises: `column` of the per-vCPU rows x `scale`."""

    name: str
    column: str
    scale: float
    label: str


# What the aggregate table reports per swept setting and VM, each over the seeds.
METRICS = (
    Metric("host_steal_pct", "host_steal_pct", 1.0, "host steal %"),
    Metric("steal_pct", "steal_pct", 1.0, "guest steal %"),
    Metric("host_run_delay_ms", "host_run_delay_ns", 1e-6, "host run_delay ms"),
    Metric("record_steal_ms", "record_steal_ns", 1e-6, "record steal ms"),
    Metric("guest_steal_ms", "guest_steal_ns", 1e-6, "guest steal ms"),
    Metric("timeslices", "timeslices", 1.0, "timeslices"),
)


@dataclass(frozen=True)
class Aggregate:
    """One group's metric over the runs (seeds) of one setting."""

    group: tuple[tuple[str, Any], ...]  # (column, value): the swept values, then the vCPU group
    metric: Metric
    interval: Interval


def aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[Metric] = METRICS,
              level: float = 0.95) -> list[Aggregate]:
    """Per group of `keys` (the swept paths and a vCPU group such as `vm`) and metric: each run's
    value is the mean over the group's vCPUs that have one; the interval is over the runs.

    `rows` are per run and vCPU, with a `run` column naming the run; groups come in the order
    they first appear."""
    runs: dict[tuple[Any, ...], dict[Any, list[Mapping[str, Any]]]] = {}
    for row in rows:
        group = tuple(_hashable(row[k]) for k in keys)
        runs.setdefault(group, {}).setdefault(row["run"], []).append(row)
    out = []
    for group, by_run in runs.items():
        for m in metrics:
            per_run = []
            for vcpus in by_run.values():
                have = [float(r[m.column]) * m.scale for r in vcpus if r.get(m.column) is not None]
                if have:
                    per_run.append(math.fsum(have) / len(have))
            out.append(Aggregate(tuple(zip(keys, group)), m, mean_interval(per_run, level)))
    return out


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
