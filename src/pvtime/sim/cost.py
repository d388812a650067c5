"""What a scenario run will cost in wall-clock time, estimated before it starts.

Measured on the development machine (`pvtime run`, Python 3.11): the simulation itself costs
about 3e-5 s per vCPU or noise thread per simulated ms (8 vCPUs x 200 ms: 0.05 s); an idle host CPU
costs next to nothing there (tickless). The results folder dominates on large hosts:
`occupancy.png` has one panel per host CPU, and matplotlib's shared axes make it superlinear
(64 CPUs: 8.3 s, 128 CPUs: 18.4 s, fitted as 0.115 s x CPUs + 0.00022 s x CPUs^2). A host of
4096 CPUs is estimated at about 70 minutes on a 30 ms scenario.
"""

from __future__ import annotations

from pvtime.sim.scenario_schema import ScenarioSpec

SIM_S_PER_THREAD_MS = 3e-5
FIGURE_S_PER_CPU = 0.115
FIGURE_S_PER_CPU2 = 0.00022

# `pvtime run` asks for --yes above this estimate.
CONFIRM_ABOVE_S = 60.0


def estimate_seconds(spec: ScenarioSpec) -> float:
    """The estimated wall-clock seconds to run `spec` and write its results folder."""
    cpus = sum(h.cpus for h in spec.host)
    threads = sum(v.vcpus for v in spec.vm) + sum(n.count for n in spec.noise)
    return (SIM_S_PER_THREAD_MS * threads * spec.duration_ms
            + FIGURE_S_PER_CPU * cpus + FIGURE_S_PER_CPU2 * cpus * cpus)
