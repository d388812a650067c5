"""Embedded scenarios cut short for tests, with every migration and ELF guest's end kept."""

from __future__ import annotations

from pvtime.sim import scenario
from pvtime.sim.scenario_schema import ElfGuestSpec

SHORT_MS = 300  # embedded scenarios are shortened to this (migrations and ELF guests scaled alike)


def shortened(name: str, sample_ms: int | None = None) -> scenario.Scenario:
    """Embedded scenario `name`, its duration cut to SHORT_MS and its migrations and ELF guests'
    durations scaled alike, so that every migration and every guest's end still happen; sampled
    every `sample_ms` (default: its own interval, at most a tenth of the run)."""
    sc = scenario.load(name)
    spec = sc.spec
    scale = min(1.0, SHORT_MS / spec.duration_ms)
    duration = max(1, round(spec.duration_ms * scale))
    vms = []
    for vm in spec.vm:
        guest = vm.guest
        if isinstance(guest, ElfGuestSpec) and guest.duration_ms is not None:
            guest = guest.model_copy(update={"duration_ms": max(1, round(guest.duration_ms * scale))})
        vms.append(vm.model_copy(update={"guest": guest}))
    migrations = [m.model_copy(update={"at_ms": min(duration - 1, round(m.at_ms * scale))}) for m in spec.migration]
    if sample_ms is None:
        sample_ms = max(1, min(spec.sample_ms, duration // 10))
    update = {"duration_ms": duration, "sample_ms": sample_ms, "vm": vms, "migration": migrations}
    return scenario.Scenario(spec.model_copy(update=update), sc.source)
