"""Results of a run: the summary table, the results folder (CSV, Parquet, PNG, trace, JSON).

Nothing here reads the wall clock: the same run gives byte-identical files.
"""

from pvtime.report.files import write_results
from pvtime.report.table import summary_table

__all__ = ["summary_table", "write_results"]
