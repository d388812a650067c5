"""Results: tables, series files, figures, traces and the summary of a run."""
