"""A sweep's results as polars frames, for a notebook: `raysimnpo.load(run_dir)`.

The run folder is what `python -m raysimnpo.sweep` (or `raysimnpo.sweep(...)`) wrote: a local folder
or a filesystem URI (`s3://bucket/runs/tofu`). The tables are read once, on first use, through
`analysis.load` (the same reader as `python -m raysimnpo.report`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import polars as pl

from .fronts import front_table
from .load import FORGET_QUALITY, Results, completed_trials, load_runs, objectives


@dataclass(frozen=True)
class SweepFrames:
    """trials    one row per trial, Original and Retrain included (`kind`), with final FQ and MU
    metrics   long format: trial_id, stage (final / epoch / relearn / timing), epoch, metric, value
    examples  per-example rows of every evaluation (question, answer, generation, truth ratio, ...)
    front     the completed trials on the Pareto front of forget quality and model utility (both
              maximised), highest forget quality first
    relearn   the relearning attacks' rows (empty when the sweep ran none)"""

    run_dir: str

    @functools.cached_property
    def results(self) -> Results:
        return load_runs([self.run_dir])

    @property
    def trials(self) -> pl.DataFrame:
        return objectives(self.results).drop("run")

    @property
    def metrics(self) -> pl.DataFrame:
        return self.results.metrics.drop("run")

    @property
    def examples(self) -> pl.DataFrame:
        return self.results.examples.drop("run")

    @property
    def relearn(self) -> pl.DataFrame:
        return self.results.relearn.drop("run")

    @property
    def front(self) -> pl.DataFrame:
        ranked = front_table(completed_trials(self.results))
        if ranked.is_empty():
            return ranked.drop("run")
        return ranked.filter(pl.col("rank_overall") == 0).sort(FORGET_QUALITY, descending=True).drop("run")


def load_frames(run_dir: str | os.PathLike[str]) -> SweepFrames:
    """The frames of one run folder; a folder without results raises UserInputError (on first use)."""
    frames = SweepFrames(os.fspath(run_dir))
    _ = frames.results  # read now: a wrong folder is reported here, not at the first attribute
    return frames
