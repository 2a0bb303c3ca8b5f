"""Reads a sweep's Parquet results with polars: fronts, selection, tables, plots and the report.
Imports only raysimnpo.results, raysimnpo.maths and the registries (tests/test_layers.py)."""
