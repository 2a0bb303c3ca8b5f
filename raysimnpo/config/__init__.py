"""L1: the configs. `base` is at the bottom (`Frozen`, YAML, `--set` overrides, the training and
evaluation settings; it imports nothing of raysimnpo but `errors`); `run` assembles one run's config
(`RunSettings`) from the benchmarks', methods' and models' settings; `sweep` wraps a run in a search
(`SweepConfig`).

`from raysimnpo.config import load_sweep_config` (any public name of the three) keeps working: the
name is looked up in its module on first use, so that importing `config.base` from below does not
import the run and sweep configs."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    for module in ("base", "run", "sweep"):
        found = importlib.import_module(f"{__name__}.{module}")
        if not name.startswith("_") and name in vars(found):
            return vars(found)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
