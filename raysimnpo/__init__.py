"""raysimnpo: distributed sweeps for LLM unlearning (SimNPO and its baselines) on Ray.

In a notebook:

    >>> import raysimnpo
    >>> run_dir = raysimnpo.sweep("tofu", overrides=["search.num_trials=4"])  # python -m raysimnpo.sweep
    >>> frames = raysimnpo.load(run_dir)  # polars: frames.trials, .metrics, .examples, .front
    >>> kept = raysimnpo.run("tofu", method="simnpo")  # python -m raysimnpo.run

`raysimnpo.sweep` and `raysimnpo.run` are the modules behind `python -m`, made callable; they are
imported on first use (importing them here would make `python -m raysimnpo.sweep` run a module that
is already imported, which Python warns about).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .analysis.frames import SweepFrames


def load(run_dir: str) -> SweepFrames:
    """A sweep's results as polars frames (`raysimnpo.analysis.frames.SweepFrames`)."""
    from .analysis.frames import load_frames

    return load_frames(run_dir)


def __getattr__(name: str) -> Any:
    if name in ("sweep", "run"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
