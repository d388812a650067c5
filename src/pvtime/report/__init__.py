"""Results of a run: the summary table, the results folder (CSV, Parquet, PNG, trace, JSON).

Nothing here reads the wall clock but `provenance` (for provenance.json, the one file outside
the promise): the same run gives byte-identical results files. The names below are imported on
first use, so that importing one module of the package (the command imports `report.quiet` at its
start) does not import them all, pyarrow and rich's tables included.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvtime.report.files import write_results
    from pvtime.report.table import migration_table, summary_table

__all__ = ["migration_table", "summary_table", "write_results"]
_HOMES = {"write_results": "pvtime.report.files", "migration_table": "pvtime.report.table",
          "summary_table": "pvtime.report.table"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
