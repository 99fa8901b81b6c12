"""Analyses of a run's store: pure functions from xarray Datasets to statistics, tables and figures."""
