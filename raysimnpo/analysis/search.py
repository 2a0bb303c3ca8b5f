"""What the search itself did, read from a run's Optuna study (`<run>/optuna.sqlite`).

* `importances`: hyperparameter importance per method and objective, from Optuna's fANOVA
  evaluator (`optuna.importance.FanovaImportanceEvaluator`, seeded) over the method's finished
  trials. The search space is conditional (the method first, then that method's own ranges, named
  `<method>/<dotted setting>`), so each method's trials are evaluated on their own.
* `history`: every finished trial's objective values in the order the study ran them, with the best
  value so far in each objective's direction (Optuna's optimisation history, per objective).

The study's objective names are its metric names (the sweep sets them); a study without names
(written before they were set) is labelled `objective 0`, `objective 1`, ...
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

STUDY_FILE = "optuna.sqlite"
IMPORTANCE_SCHEMA = {
    "run": pl.String,
    "method": pl.String,
    "objective": pl.String,
    "param": pl.String,
    "importance": pl.Float64,
    "trials": pl.Int64,
}
HISTORY_SCHEMA = {
    "run": pl.String,
    "number": pl.Int64,
    "method": pl.String,
    "objective": pl.String,
    "direction": pl.String,
    "value": pl.Float64,
    "best_so_far": pl.Float64,
}


@contextmanager
def _local_study_file(run_dir: str) -> Iterator[Path | None]:
    """The run's study file on this machine (downloaded from a filesystem URI), None without one."""
    if "://" not in run_dir or run_dir.startswith("file://"):
        path = Path(run_dir.removeprefix("file://")) / STUDY_FILE
        yield path if path.is_file() else None
        return
    from ..results.storage import open_storage

    storage = open_storage(run_dir)
    if not storage.is_file(STUDY_FILE):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="raysimnpo-study-") as scratch:
        local = Path(scratch) / STUDY_FILE
        storage.download_file(local, STUDY_FILE)
        yield local


def load_study(run_dir: str) -> Any | None:
    """The run's Optuna study (read into memory), None when the run has no study file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _local_study_file(run_dir) as path:
        if path is None:
            return None
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
        names = optuna.get_all_study_names(storage)
        if not names:
            return None
        stored = optuna.load_study(study_name=names[0], storage=storage)
        copy = optuna.create_study(directions=stored.directions)
        copy.add_trials(stored.get_trials(deepcopy=False))
        if stored.metric_names is not None:
            with warnings.catch_warnings():  # set_metric_names is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                copy.set_metric_names(stored.metric_names)
        return copy


def objective_names(study: Any) -> list[str]:
    return list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])


def _finished(study: Any) -> list[Any]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def importances(study: Any, run: str, *, seed: int = 0) -> pl.DataFrame:
    """fANOVA importance of each searched setting of each method, per objective (they sum to 1 over
    a method's settings). Methods with fewer than 2 finished trials, or no varied setting, have no rows."""
    import optuna

    rows: list[dict[str, Any]] = []
    names = objective_names(study)
    by_method: dict[str, list[Any]] = {}
    for trial in _finished(study):
        by_method.setdefault(str(trial.params.get("method", "")), []).append(trial)
    for method, trials in sorted(by_method.items()):
        searched = sorted({p for t in trials for p in t.params if p != "method"})
        varied = [p for p in searched if len({t.params.get(p) for t in trials}) > 1]
        if len(trials) < 2 or not varied:
            continue
        sub = optuna.create_study(directions=study.directions)
        for t in trials:  # only the method's own settings: the method is constant here
            keep = {p: t.params[p] for p in searched if p in t.params}
            sub.add_trial(
                optuna.trial.create_trial(
                    params=keep,
                    distributions={p: t.distributions[p] for p in keep},
                    values=t.values,
                )
            )
        for i, objective in enumerate(names):
            if len({t.values[i] for t in trials}) < 2:
                continue  # a constant objective: no setting explains any of its variance
            scores = optuna.importance.get_param_importances(
                sub,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
                params=[p for p in varied if all(p in t.params for t in trials)] or None,
                target=lambda t, i=i: t.values[i],
            )
            for param, value in scores.items():
                rows.append(
                    {
                        "run": run,
                        "method": method,
                        "objective": objective,
                        "param": param.split("/", 1)[-1],
                        "importance": float(value),
                        "trials": len(trials),
                    }
                )
    return pl.DataFrame(rows, schema=IMPORTANCE_SCHEMA)


def history(study: Any, run: str) -> pl.DataFrame:
    """One row per finished trial and objective, in trial order, with the best value so far."""
    import optuna

    rows: list[dict[str, Any]] = []
    names = objective_names(study)
    for i, objective in enumerate(names):
        maximise = study.directions[i] == optuna.study.StudyDirection.MAXIMIZE
        best: float | None = None
        for trial in sorted(_finished(study), key=lambda t: t.number):
            value = float(trial.values[i])
            best = value if best is None else (max(best, value) if maximise else min(best, value))
            rows.append(
                {
                    "run": run,
                    "number": trial.number,
                    "method": str(trial.params.get("method", "")),
                    "objective": objective,
                    "direction": "max" if maximise else "min",
                    "value": value,
                    "best_so_far": best,
                }
            )
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA)


def search_tables(runs: Sequence[tuple[str, str]], *, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(importances, history) of every (label, run_dir) that has a study."""
    found = [(label, load_study(run_dir)) for label, run_dir in runs]
    studies = [(label, study) for label, study in found if study is not None]
    return (
        pl.concat([importances(s, label, seed=seed) for label, s in studies], how="vertical").cast(
            IMPORTANCE_SCHEMA
        )
        if studies
        else pl.DataFrame(schema=IMPORTANCE_SCHEMA),
        pl.concat([history(s, label) for label, s in studies], how="vertical").cast(HISTORY_SCHEMA)
        if studies
        else pl.DataFrame(schema=HISTORY_SCHEMA),
    )
