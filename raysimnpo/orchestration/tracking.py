"""Experiment tracking: each trial as an MLflow or Weights & Biases run, through Ray Tune's own
logger callbacks (the sweep file's `tracking:` section, `config.TrackingSettings`).

Tune's callbacks log a trial's parameters (its sampled configuration) and what it reports: the
final metrics (TOFU: forget quality, model utility and the rest). A trial reports once, at its end,
so the per-epoch losses and the checkpoint path are read from the trial's own rows of the results
tables (written just before it reports) and logged with them: the epoch rows at step = epoch, the
final metrics at the last epoch's step, the checkpoint as a parameter (MLflow) / config (W&B).

Secrets come from the environment only (WANDB_API_KEY; MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), which both libraries read themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune import Callback

from .. import results
from ..config.sweep import SweepConfig
from ..results.storage import Storage

EPOCH_PREFIX = "epoch/"


def trial_extras(root: str, trial_id: str) -> tuple[list[tuple[int, dict[str, float]]], str | None]:
    """A trial's per-epoch metrics `[(epoch, {"epoch/<metric>": value})]`, in epoch order, and its
    checkpoint path, from its rows of the results tables under `root`."""
    by_epoch: dict[int, dict[str, float]] = {}
    for row in results.read_trial_rows(root, "metrics", trial_id):
        if row["stage"] == "epoch" and row["epoch"] is not None:
            by_epoch.setdefault(int(row["epoch"]), {})[EPOCH_PREFIX + row["metric"]] = float(row["value"])
    trial = results.read_trial_row(root, trial_id)
    return sorted(by_epoch.items()), None if trial is None else trial["checkpoint"]


def _mlflow_callback() -> type:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MlflowTracking(MLflowLoggerCallback):
        def __init__(self, results_root: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.results_root = results_root

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            run_id = self._trial_runs[trial]
            epochs, checkpoint = trial_extras(self.results_root, trial.trial_id)
            for epoch, metrics in epochs:
                self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=metrics, step=epoch)
            if checkpoint is not None:
                self.mlflow_util.log_params(run_id=run_id, params_to_log={"checkpoint": checkpoint})
            step = epochs[-1][0] if epochs else result.get(TRAINING_ITERATION, 1)
            super().log_trial_result(iteration, trial, {**result, TRAINING_ITERATION: step})

    return MlflowTracking


def _wandb_callback() -> type:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbTracking(WandbLoggerCallback):
        def __init__(self, results_root: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.results_root = results_root

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            # W&B steps only go forward: the epochs at 1..E, then the final metrics at E.
            epochs, checkpoint = trial_extras(self.results_root, trial.trial_id)
            for epoch, metrics in epochs:
                super().log_trial_result(iteration, trial, {**metrics, TRAINING_ITERATION: epoch})
            step = epochs[-1][0] if epochs else result.get(TRAINING_ITERATION, 1)
            config = {**result.get("config", {}), "checkpoint": checkpoint}
            super().log_trial_result(iteration, trial, {**result, TRAINING_ITERATION: step, "config": config})

    return WandbTracking


def tracking_callbacks(sweep: SweepConfig, storage: Storage) -> list[Callback]:
    """The logger callback of the sweep's `tracking.kind` (none: no callback). MLflow's default store
    is `<run>/mlflow.db`, W&B's offline runs go to `<run>/wandb/` (on a remote storage, both under
    `<cache_dir>/tracking/<sweep>/` on the driver)."""
    settings = sweep.tracking
    root = results.results_root(storage.uri, sweep.name)
    local = (
        Path(storage.uri) / sweep.name
        if not storage.remote
        else Path(sweep.run.cache_dir).expanduser() / "tracking" / sweep.name
    )
    name = settings.experiment or sweep.name
    tags = {"sweep": sweep.name, **settings.tags}
    if settings.kind == "mlflow":
        # MLflow's local store: an sqlite file (its `./mlruns` folder store is in maintenance mode).
        local.mkdir(parents=True, exist_ok=True)
        uri = settings.tracking_uri or f"sqlite:///{(local / 'mlflow.db').resolve()}"
        return [_mlflow_callback()(root, tracking_uri=uri, experiment_name=name, tags=tags)]
    if settings.kind == "wandb":
        if settings.mode == "offline":
            # Ray's callback skips the API-key check only when the driver's WANDB_MODE says offline.
            os.environ["WANDB_MODE"] = "offline"
        (local / "wandb").mkdir(parents=True, exist_ok=True)
        return [
            _wandb_callback()(
                root,
                project=name,
                mode=settings.mode,
                dir=str(local),
                tags=sorted(f"{k}:{v}" for k, v in tags.items()),
            )
        ]
    return []
