"""Report: run tables (mean ± std over seeds) and figures."""
