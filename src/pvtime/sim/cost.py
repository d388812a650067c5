"""What a scenario run will cost in wall-clock time, estimated before it starts.

Measured on the development machine (`pvtime run`, Python 3.11): the simulation itself costs
about 3e-5 s per vCPU or noise thread per simulated ms (8 vCPUs x 200 ms: 0.05 s); an idle host CPU
costs next to nothing there (tickless). The results folder adds its occupancy files, a row per host
CPU per sample interval (about 1e-5 s a row: 1024 CPUs x 100 intervals, 1 s), and the two figures,
under 2 s at any size (a panel per host CPU up to 16, a heatmap past that). A host of 4096 CPUs
run for 10 virtual minutes is estimated at about 41 minutes, nearly all of it occupancy rows.
"""

from __future__ import annotations

from pvtime.sim.scenario_schema import ScenarioSpec

SIM_S_PER_THREAD_MS = 3e-5
OCCUPANCY_S_PER_ROW = 1e-5
FIGURES_S = 2.0

# `pvtime run` asks for --yes above this estimate.
CONFIRM_ABOVE_S = 60.0


def estimate_seconds(spec: ScenarioSpec) -> float:
    """The estimated wall-clock seconds to run `spec` and write its results folder."""
    cpus = sum(h.cpus for h in spec.host)
    threads = sum(v.vcpus for v in spec.vm) + sum(n.count for n in spec.noise)
    intervals = -(-spec.duration_ms // spec.sample_ms)
    return SIM_S_PER_THREAD_MS * threads * spec.duration_ms + OCCUPANCY_S_PER_ROW * cpus * intervals + FIGURES_S
