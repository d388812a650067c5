"""What the figures draw, apart from the figures: the run's process builds it without matplotlib,
and sends the figure process (`report.figure_process`) no more than it draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from pvtime.sim.results import RunResult


class VcpuKey(NamedTuple):
    """A vCPU by its VM and index."""

    vm: str
    vcpu: int


@dataclass(frozen=True)
class FigureData:
    """What the figures draw, taken from a run's result (`figure_data`): names, numbers and arrays
    only, a fraction of the result to pickle for the figure process."""

    name: str  # the scenario's
    sample_ms: int
    duration_ns: int
    grid_ns: np.ndarray  # the sample times
    vcpus: tuple[VcpuKey, ...]  # in the scenario's order
    series: dict[str, dict[str, np.ndarray]]  # "vm/vcpuN" -> column -> values (masked: no value)
    occupancy: dict[tuple[str, int], np.ndarray]  # (host, cpu) -> busy ns (category, interval)
    categories: tuple[str, ...]  # the occupancy's rows


def figure_data(result: RunResult | FigureData) -> FigureData:
    """The figures' inputs from `result`."""
    if isinstance(result, FigureData):
        return result
    from pvtime.sim.recorder import CATEGORIES, STEAL_COLUMNS

    views = ("pv_time_st_calls", *STEAL_COLUMNS)
    return FigureData(result.spec.name, result.spec.sample_ms, result.duration_ns, result.grid_ns,
                      tuple(VcpuKey(r.vm, r.vcpu) for r in result.vcpus),
                      {key: {c: cols[c] for c in views} for key, cols in result.series.items()},
                      dict(result.occupancy), tuple(CATEGORIES))
