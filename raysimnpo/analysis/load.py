"""Read one or several sweep runs' Parquet results into polars frames (DESIGN §8).

A run folder is `<storage>/<sweep>`; its tables live in `<storage>/<sweep>/results/` and are read with
`raysimnpo.results.read_table` only (never Tune's own files), so a run on any pyarrow filesystem URI
(`file:///...`, `s3://bucket/runs/<sweep>`) is read the same way as a local folder. Every frame gets a
`run` column (a short label per run folder) so that several runs can be compared in one report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .. import results
from ..errors import UserInputError
from ..results.storage import is_uri

# The per-trial FQ / MU objectives (DESIGN §6), both "higher is better".
FORGET_QUALITY = "forget_quality"
MODEL_UTILITY = "model_utility"
REFERENCE_KINDS = ("original", "retrain")
REFERENCE_LABELS = {"original": "Original", "retrain": "Retrain"}


@dataclass(frozen=True)
class Run:
    """One run folder: its label in tables and plots, the folder as given, and its results root."""

    label: str
    run_dir: str
    root: str


@dataclass(frozen=True)
class Results:
    """The results tables of one or more runs, each with a leading `run` column (`weights` and
    `relearn` have zero rows for a run written without them).

    `trials` also has `config`: params_json with every "seed" key removed, re-serialised with sorted
    keys, so that trials of one configuration run with different seeds share it.
    """

    runs: tuple[Run, ...]
    trials: pl.DataFrame
    metrics: pl.DataFrame
    examples: pl.DataFrame
    weights: pl.DataFrame
    relearn: pl.DataFrame

    @property
    def labels(self) -> list[str]:
        return [run.label for run in self.runs]


def results_root_of(run_dir: str) -> str:
    """`RUN_DIR/results`; for a local folder that itself holds `trials/` (a results root), the folder."""
    text = os.fspath(run_dir)
    if "://" not in text:
        path = Path(text).expanduser()
        if not (path / "results").is_dir() and (path / "trials").is_dir():
            return str(path)
    return f"{text.rstrip('/')}/results"


def run_labels(run_dirs: Sequence[str]) -> list[str]:
    """Short labels: the folder names (the sweep names), or the whole paths when two names clash."""
    names = [os.fspath(d).rstrip("/").rsplit("/", 1)[-1] or os.fspath(d) for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [os.fspath(d).rstrip("/") for d in run_dirs]


def _refuse_repeats(run_dirs: Sequence[str]) -> None:
    """One run folder given twice (the same path, spelt alike or not) would count its trials twice."""
    seen: dict[str, str] = {}
    for given in map(os.fspath, run_dirs):
        key = (
            given.rstrip("/")
            if is_uri(given)
            else os.path.realpath(os.path.expanduser(given.removeprefix("file://")))
        )
        if key in seen:
            raise UserInputError(f"RUN_DIR: {given} is {seen[key]} again; give each run folder once")
        seen[key] = given


def _without_seed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seed(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seed(v) for v in value]
    return value


def config_key(params_json: str) -> str:
    """The configuration a trial ran: its params_json without any "seed" entry, keys sorted."""
    return json.dumps(_without_seed(json.loads(params_json)), sort_keys=True)


def _frame(root: str, name: str, label: str) -> pl.DataFrame:
    frame = pl.from_arrow(results.read_table(root, name))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(pl.lit(label, dtype=pl.String).alias("run"), pl.all())


def load_runs(run_dirs: Sequence[str]) -> Results:
    """Read `trials`, `metrics`, `examples`, `weights` and `relearn` of every run folder (all of them before anything is
    written, so that a bad folder stops the report with its UserInputError from `read_table`). Each
    evaluated epoch before a trial's last is added as a trial `<trial id>.epoch-<epoch>` of its own
    (`raysimnpo.results.epoch_candidates`), so fronts, the selection and the export see every epoch."""
    _refuse_repeats(run_dirs)
    labels = run_labels(run_dirs)
    runs = tuple(
        Run(label, os.fspath(d), results_root_of(os.fspath(d)))
        for label, d in zip(labels, run_dirs, strict=True)
    )
    tables: dict[str, list[pl.DataFrame]] = {name: [] for name in results.TABLE_NAMES}
    for run in runs:
        for name in results.TABLE_NAMES:
            tables[name].append(_frame(run.root, name, run.label))
    for i, run in enumerate(runs):  # every evaluated epoch is a candidate (`results.epoch_candidates`)
        trials_frame, metrics_frame = tables["trials"][i], tables["metrics"][i]
        extra_trials, extra_metrics = results.epoch_candidates(
            trials_frame.to_dicts(), metrics_frame.to_dicts(), (FORGET_QUALITY, MODEL_UTILITY)
        )
        if extra_trials:
            fill = {c: metrics_frame[c][0] for c in metrics_frame.columns if c == "schema_version"}
            tables["trials"][i] = pl.concat(
                [trials_frame, pl.DataFrame(extra_trials, schema=trials_frame.schema)], how="vertical"
            )
            tables["metrics"][i] = pl.concat(
                [
                    metrics_frame,
                    pl.DataFrame(
                        [{**fill, **m, "run": run.label} for m in extra_metrics], schema=metrics_frame.schema
                    ),
                ],
                how="vertical",
            )
    trials = pl.concat(tables["trials"], how="vertical")
    trials = trials.with_columns(
        pl.Series("config", [config_key(p) for p in trials["params_json"].to_list()], dtype=pl.String)
    )
    return Results(
        runs=runs,
        trials=trials,
        metrics=pl.concat(tables["metrics"], how="vertical"),
        examples=pl.concat(tables["examples"], how="vertical"),
        weights=pl.concat(tables["weights"], how="vertical"),
        relearn=pl.concat(tables["relearn"], how="vertical"),
    )


def final_metrics(res: Results, names: Sequence[str]) -> pl.DataFrame:
    """One row per (run, trial_id) with a column per metric in `names` (stage "final"; null if absent)."""
    final = res.metrics.filter(pl.col("stage") == "final")
    if final.is_empty():
        wide = pl.DataFrame(schema={"run": pl.String, "trial_id": pl.String})
    else:
        wide = final.pivot(on="metric", index=["run", "trial_id"], values="value")
    missing = [n for n in names if n not in wide.columns]
    wide = wide.with_columns([pl.lit(None, dtype=pl.Float64).alias(n) for n in missing])
    return wide.select("run", "trial_id", *names)


def objectives(res: Results) -> pl.DataFrame:
    """Every trial with its FQ and MU: the `metrics` table's final values, else the `trials` columns."""
    wide = final_metrics(res, [FORGET_QUALITY, MODEL_UTILITY]).rename(
        {FORGET_QUALITY: "_fq", MODEL_UTILITY: "_mu"}
    )
    return (
        res.trials.join(wide, on=["run", "trial_id"], how="left")
        .with_columns(
            pl.coalesce("_fq", FORGET_QUALITY).alias(FORGET_QUALITY),
            pl.coalesce("_mu", MODEL_UTILITY).alias(MODEL_UTILITY),
        )
        .drop("_fq", "_mu")
    )


def completed_trials(res: Results) -> pl.DataFrame:
    """Trials (kind "trial") that completed and have a finite FQ and MU, in (run, trial_id) order."""
    return (
        objectives(res)
        .filter(
            (pl.col("kind") == "trial")
            & (pl.col("status") == "completed")
            & pl.col(FORGET_QUALITY).is_finite()
            & pl.col(MODEL_UTILITY).is_finite()
        )
        .sort("run", "trial_id")
    )


def reference_trials(res: Results) -> pl.DataFrame:
    """The Original and Retrain rows (kind "original" / "retrain") with their FQ and MU."""
    return objectives(res).filter(pl.col("kind").is_in(list(REFERENCE_KINDS))).sort("run", "kind")


def retrain_utility(res: Results) -> dict[str, float]:
    """MU of each run's Retrain model (runs without a Retrain row are left out)."""
    rows = reference_trials(res).filter((pl.col("kind") == "retrain") & pl.col(MODEL_UTILITY).is_finite())
    return dict(zip(rows["run"].to_list(), rows[MODEL_UTILITY].to_list(), strict=True))


def methods(res: Results) -> list[str]:
    """The unlearning methods that have trials, sorted."""
    return sorted(res.trials.filter(pl.col("kind") == "trial")["method"].unique().to_list())
