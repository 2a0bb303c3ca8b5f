"""`python -m raysimnpo.report` reads the analysis tests' fixture sweep (tests/analysis/conftest.py)."""

from ..analysis.conftest import demo_run, make_run

__all__ = ["demo_run", "make_run"]
