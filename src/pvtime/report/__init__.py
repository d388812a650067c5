"""Results of a run: the summary table, the results folder (CSV, Parquet, PNG, trace, JSON).

Nothing here reads the wall clock: the same run gives byte-identical files.
"""

from pvtime.report.files import write_results
from pvtime.report.table import migration_table, summary_table

__all__ = ["migration_table", "summary_table", "write_results"]
