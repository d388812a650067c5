"""One run's results folder, written the same way by `pvtime run` and by each run of `pvtime sweep`:
the results (`pvtime.report.write_results`) and provenance.json, with no library chatter on the
terminal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pvtime.report.quiet import no_library_warnings

if TYPE_CHECKING:
    from pvtime.report.figure_process import FigureProcess
    from pvtime.sim.results import RunResult
    from pvtime.sim.scenario import Scenario


def write_run(result: RunResult, scenario: Scenario, folder: Path, *, force: bool, argv: Sequence[str],
              started: datetime, wall_s: float, figures: FigureProcess | None = None) -> list[Path]:
    """Write `result`, a run of `scenario` begun at `started` that took `wall_s` seconds, into
    `folder` (replaced whole: `pvtime.report.outdir`), with provenance.json naming `argv` and the
    scenario's overrides; return the files' paths. The figures are drawn by `figures` if given,
    else here. Raises OutFolderError or OSError."""
    with no_library_warnings():  # importing matplotlib may announce that it builds its font cache
        from pvtime.report import write_results
        from pvtime.report.provenance import provenance

        prov = provenance(scenario, argv=list(argv), started=started, wall_s=wall_s,
                          overrides={o.path: o.value for o in scenario.overrides})
        return write_results(result, folder, force=force, provenance=prov, figures=figures)
