"""The report: the summary table of every run, and the self-contained HTML comparison."""
