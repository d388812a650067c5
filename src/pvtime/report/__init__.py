"""Results of a run: the summary table, the results folder (CSV, Parquet, PNG, trace, JSON).

Nothing here reads the wall clock but `provenance` (for provenance.json, the one file outside
the promise): the same run gives byte-identical results files.
"""

from pvtime.report.files import write_results
from pvtime.report.table import migration_table, summary_table

__all__ = ["migration_table", "summary_table", "write_results"]
