"""The model CPU's shortcut (no second look for an exit or an interrupt after work that ended
before any timer fired) gives exactly the results of looking after every piece of work.

Every embedded scenario runs twice, shortened to tests/sim/shortened.SHORT_MS (300 ms, migrations
and ELF guests scaled alike, so each still happens): once as `pvtime run` runs it, once with
`ModelCpu.step_by_step`. Everything a results folder holds must be equal: the summary, the
series and occupancy tables, the trace and the consoles.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pvtime.cpu.model import ModelCpu
from pvtime.kvm.traps import Traps
from pvtime.report.files import occupancy_columns, series_columns, summary, trace_document
from pvtime.sim import scenario
from pvtime.sim.runner import run
from tests.sim.shortened import shortened


def _folder(name: str, *, step_by_step: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """What the results folder of the shortened scenario holds (as one JSON text), and how many
    times the vCPUs looked for a pending interrupt."""
    looks = [0]
    pending = Traps.irq_pending

    def counted(self: Traps) -> bool:
        looks[0] += 1
        return pending(self)

    with monkeypatch.context() as m:
        m.setattr(ModelCpu, "step_by_step", step_by_step)
        m.setattr(Traps, "irq_pending", counted)
        sc = shortened(name)
        # the trace too, whatever the scenario says
        result = run(scenario.Scenario(sc.spec.model_copy(update={"trace": True}), sc.source))
    doc: dict[str, Any] = {
        "summary": summary(result), "series": series_columns(result),
        "occupancy": occupancy_columns(result), "trace": trace_document(result),
        "consoles": {vm.name: vm.console for vm in result.vms},
    }
    return json.dumps(doc, sort_keys=True, default=repr), looks[0]


@pytest.mark.parametrize("name", scenario.embedded_names())
def test_shortcut_gives_the_step_by_step_results(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_looks = _folder(name, step_by_step=False, monkeypatch=monkeypatch)
    slow, slow_looks = _folder(name, step_by_step=True, monkeypatch=monkeypatch)
    assert fast == slow
    assert fast_looks < slow_looks  # the shortcut was taken (else this compares a path with itself)
