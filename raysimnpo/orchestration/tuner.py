"""The sweep driver: prepare once, then Ray Tune + Optuna (multi-objective) over unlearning trials.

Layout of a run folder `<storage>/<sweep name>/`:
    optuna.sqlite      the Optuna study (open it with `optuna-dashboard sqlite:///.../optuna.sqlite`)
    tune/              Ray Tune's experiment state (what `--resume` restores)
    checkpoints/<id>/  each trial's unlearned model (HF folder)
    results/           Parquet tables trials / metrics / examples (raysimnpo.results)
Prepared Original and Retrain models are shared by every sweep of a storage: `<storage>/prepared/`.

The storage is a local folder or any pyarrow filesystem URI (s3://, gs://). On a URI, Ray Tune
writes its state there (`storage_path`), results go through pyarrow.fs, prepared models and
checkpoints are uploaded after they are written on a node's local disk (and downloaded once per
node, `storage.local_copy`), and the Optuna study, an sqlite file that cannot live on an object
store, stays on the driver's disk (`<cache_dir>/studies/`) and is copied to `<run>/optuna.sqlite`
after every finished trial and at the end (and fetched from there by `--resume`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from .. import results
from ..config.sweep import SweepConfig
from ..maths.metrics import metric_direction
from ..orchestration.cluster import trials_use_torch_trainer
from ..orchestration.epochs import front_actor_name, known_points, start_front
from ..orchestration.prepare import prepare_stage
from ..orchestration.search import DefineByRun, SweepSearch, deterministic_lag, sampler_for
from ..orchestration.study import ENDED, EPOCH_POINT, INTERRUPTED, finished_trials, study_file
from ..orchestration.tracking import tracking_callbacks
from ..orchestration.trial import SharedWorkspace, unlearning_trial
from ..recipes.workspace import Log, Workspace, workspace
from ..results.storage import Storage


class Progress(tune.Callback):
    """One line per finished trial: done / running / failed out of every trial of the sweep, the best
    value of each objective so far (TOFU: FQ and MU), time left.

    The counts and the best values are read from the sweep's Optuna study, which Tune's searcher
    updates before the callbacks run: so a resumed sweep (whose earlier trials get no callback) and an
    extended one (whose earlier trials belong to another Tune experiment) count every trial once."""

    def __init__(
        self,
        total: int,
        log: Log,
        objectives: Sequence[tuple[str, str]],
        study_path: Path,
        study_name: str,
        after_trial: Callable[[], None] | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.total, self.log, self.after_trial = total, log, after_trial
        self.objectives, self.study_path, self.study_name = objectives, study_path, study_name
        self.where = f" (log: {log_file})" if log_file is not None else ""
        self.started = time.monotonic()
        self.finished_here = 0  # finished in this process: the rate behind the time left

    def _study_state(self) -> tuple[int, int, dict[str, float]]:
        """(done, failed, best value per objective) of the study's trials."""
        study = optuna.load_study(
            study_name=self.study_name, storage=optuna.storages.RDBStorage(f"sqlite:///{self.study_path}")
        )
        done = failed = 0
        best = {metric: float("nan") for metric, _ in self.objectives}
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get(INTERRUPTED):
                continue
            if t.state == optuna.trial.TrialState.RUNNING:
                done += 1 if t.user_attrs.get(ENDED) else 0  # ended, told later (deterministic search)
                continue
            if t.state == optuna.trial.TrialState.FAIL:
                failed += 1
                continue
            done += 0 if t.user_attrs.get(EPOCH_POINT) else 1
            for (key, _), value in zip(self.objectives, t.values or [], strict=False):
                # Best by the metric's own direction (`METRICS`): max, min, or closest to 0.
                current = best[key]
                better = {"max": value > current, "min": value < current, "zero": abs(value) < abs(current)}
                if current != current or better[metric_direction(key)]:
                    best[key] = float(value)
        return done, failed, best

    def _line(self, trials: list[Any], finished_now: Any = None) -> None:
        done, failed, best = self._study_state()
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not finished_now)
        elapsed = time.monotonic() - self.started
        left = max(0, self.total - done - failed)
        eta = elapsed / self.finished_here * left if self.finished_here else float("nan")
        short = {"forget_quality": "FQ", "model_utility": "MU"}
        # nothing told to the study yet (the deterministic search tells a trial later): "-", not "nan"
        shown = " ".join(
            f"best {short.get(k, k)} {'-' if v != v else format(v, '.3g')}" for k, v in best.items()
        )
        self.log(
            f"[sweep] {done}/{self.total} done, {running} running, {failed} failed | {shown} | "
            f"elapsed {elapsed / 60:.1f} min, left ~{eta / 60:.1f} min"
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished_here += 1
        self._line(trials, trial)
        if self.after_trial is not None:
            self.after_trial()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished_here += 1
        self._line(trials, trial)
        self.log(f"[sweep] trial {trial.trial_id} failed: {failure_reason(trial)}{self.where}")
        if self.after_trial is not None:
            self.after_trial()


def failure_reason(trial: Any) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    text = str(trial.get_error() or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no error text recorded"


def trial_resources(sweep: SweepConfig) -> dict[str, Any]:
    """What a trial's own process asks for: its CPU (and `resources.custom`, which pins trials to
    the node type that has it)."""
    r = sweep.resources
    custom = {"custom_resources": dict(r.custom)} if r.custom else {}
    if trials_use_torch_trainer(sweep):
        # The trial only drives a TorchTrainer, whose workers hold the CPUs and GPUs (Tune needs
        # a non-empty request, so the driver asks for a sliver of a CPU).
        return {"cpu": 0.01, **custom}
    return {"cpu": r.cpus_per_worker, **custom}


def max_concurrent(sweep: SweepConfig) -> int:
    if sweep.search.max_concurrent_trials is not None:
        return sweep.search.max_concurrent_trials
    r = sweep.resources
    available = ray.cluster_resources()
    limits = [int(available.get("CPU", 1) // (r.workers * r.cpus_per_worker))]
    if r.gpus_per_worker > 0:
        limits.append(int(available.get("GPU", 0) // (r.workers * r.gpus_per_worker)))
    return max(1, min(limits))


def sync_study(study: Path, storage: Storage, name: str) -> None:
    """Copy the driver's study file to `<run>/optuna.sqlite` on a remote storage (a snapshot taken
    with sqlite's backup API, so a write in progress is never copied half-done)."""
    if not storage.remote or not study.is_file():
        return
    import sqlite3

    snapshot = study.with_name(".optuna-snapshot.sqlite")
    with sqlite3.connect(study) as source, sqlite3.connect(snapshot) as target:
        source.backup(target)
    storage.upload_file(snapshot, name, "optuna.sqlite")
    snapshot.unlink()


def pin_autoscaling_coordinator() -> None:
    """Ray Data and Ray Train create one detached `AutoscalingCoordinator` actor per cluster, on
    the node of whoever asks first; created by a trial it would sit on a worker node forever and
    keep the autoscaler from ever removing that node. Asked for here, it lives on the driver's
    node (the head on a cluster)."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
    except ImportError:  # a Ray without it has nothing to pin
        return
    get_or_create_autoscaling_coordinator()


def experiment_names(storage: Storage, sweep_name: str) -> list[str]:
    """The sweep's Tune experiments in the order they ran: `tune`, then `tune-2`, `tune-3`, ... one
    per extension of a finished sweep (`--resume --set search.num_trials=N`)."""
    names: list[str] = []
    while storage.exists(sweep_name, "tune" if not names else f"tune-{len(names) + 1}"):
        names.append("tune" if not names else f"tune-{len(names) + 1}")
    return names


def run_sweep(
    sweep: SweepConfig,
    storage: Storage,
    *,
    resume: bool,
    log: Log,
    ws: Workspace | None = None,
    log_file: Path | None = None,
) -> Path:
    """Run the sweep into `<storage>/<sweep name>/`; returns the driver's Optuna study file. `ws`: the
    sweep's workspace when the caller has built it already (the sweep CLI, while validating);
    `log_file`: where a failed trial's traceback is (named in its progress line).

    `resume`: the last Tune experiment is restored and finishes its trials; then, while the study
    holds fewer finished trials than `search.num_trials`, a new experiment (`tune-<k>`) asks the same
    Optuna study for the rest, so the sampler learns from every earlier trial and no trial runs twice.
    """
    pin_autoscaling_coordinator()
    study = study_file(sweep, storage)
    study.parent.mkdir(parents=True, exist_ok=True)
    ws = workspace(sweep.run) if ws is None else ws
    shared = SharedWorkspace(ray.put(ws))
    prepared = prepare_stage(sweep, storage, log, ws, shared)
    headline = ws.benchmark.headline_metrics
    for kind, values in (("original", prepared.original_metrics), ("retrain", prepared.retrain_metrics)):
        if values is not None:
            log(f"[prepare] {kind.capitalize()} {' '.join(f'{k} {values[k]:.3g}' for k in headline)}")
    # The workspace and the handoff go through the object store once (`with_parameters`); every
    # trial gets them from there instead of loading, tokenizing and encoding the data again.
    budget = sweep.search.time_budget_minutes
    deadline = None if budget is None else time.time() + 60 * budget
    trainable = tune.with_resources(
        tune.with_parameters(
            unlearning_trial,
            sweep_json=sweep.model_dump_json(),
            prepared=prepared,
            workspace=shared,
            deadline=deadline,
        ),
        trial_resources(sweep),
    )
    # Tune saves its experiment state (what `--resume` restores) at most every 10 s by default; a
    # driver killed in between would forget trials that already wrote their rows and told Optuna,
    # and `--resume` would run them again. Saved after every controller event instead (a few KB).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    progress = Progress(
        sweep.search.num_trials,
        log,
        [(o.metric, o.mode) for o in sweep.search.objectives],
        study,
        sweep.name,
        after_trial=lambda: sync_study(study, storage, sweep.name),
        log_file=log_file,
    )
    callbacks = [progress, *tracking_callbacks(sweep, storage)]
    root, metrics = results.results_root(storage.uri, sweep.name), [o.metric for o in sweep.search.objectives]
    if sweep.search.early_stop is not None:  # kept alive by this driver until the sweep ends
        front = start_front(sweep, known_points(root, metrics))
        log(
            f"[sweep] early stopping: a trial stops when all its epochs are dominated by a margin of "
            f"{sweep.search.early_stop.margin:g} (rank percentiles), after {sweep.search.early_stop.min_epochs} epochs"
        )
    experiments = experiment_names(storage, sweep.name) if resume else []
    if experiments and tune.Tuner.can_restore(storage.join(sweep.name, experiments[-1])):
        last = storage.join(sweep.name, experiments[-1])
        log(f"[sweep] resuming {last}")
        restored = tune.Tuner.restore(last, trainable=trainable, resume_errored=False)
        # The restored run config holds the callbacks pickled when the experiment began; this
        # driver's own (progress over every trial of the sweep, tracking) replace them.
        restored._local_tuner.get_run_config().callbacks = callbacks
        restored.fit()
        mark_interrupted(study, sweep.name, log)
    done = finished_trials(study, sweep.name) if resume else 0
    remaining = sweep.search.num_trials - done
    if remaining > 0:
        name = "tune" if not experiments else f"tune-{len(experiments) + 1}"
        if experiments:
            log(f"[sweep] extending {sweep.name} by {remaining} trials (experiment {name})")
        # Every trial of the earlier experiments is told: a deterministic front shows them to all new ones.
        earlier = sorted(known_points(root, metrics)) if sweep.search.early_stop is not None else []
        new_tuner(sweep, storage, study, trainable, name, remaining, callbacks, deadline, earlier, done).fit()
        mark_interrupted(study, sweep.name, log)
    sync_study(study, storage, sweep.name)
    if sweep.search.early_stop is not None:
        ray.kill(front)
    return study


def new_tuner(
    sweep: SweepConfig,
    storage: Storage,
    study: Path,
    trainable: Any,
    name: str,
    num_trials: int,
    callbacks: list[Any],
    deadline: float | None = None,
    earlier: Sequence[str] = (),
    first_turn: int = 0,
) -> tune.Tuner:
    """A Tune experiment `<run>/<name>` of `num_trials` trials proposed by the sweep's Optuna study
    (created, or loaded when it exists: an extension continues the same study), proposing none
    after `deadline`. `earlier`: the trials of the sweep's earlier experiments in its EpochFront;
    `first_turn`: how many trials they ran (an extension's first trial takes the next method's turn)."""
    objectives = sweep.search.objectives
    concurrent = max_concurrent(sweep)
    search = SweepSearch(
        space=DefineByRun(sweep.search),
        metric=[o.metric for o in objectives],
        mode=[o.mode for o in objectives],
        sampler=sampler_for(sweep.search),
        study_name=sweep.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{study}"),
        deadline=deadline,
        # every epoch a point of the study (orchestration.epochs)
        epoch_points=sweep.run.evaluation.every_epoch,
        front=None if sweep.search.early_stop is None else front_actor_name(sweep),
        lag=deterministic_lag(concurrent) if sweep.search.deterministic else None,
        num_trials=num_trials,
        earlier=earlier,
        first_turn=first_turn,
    )
    # Named objectives: the report's importances and history, and optuna-dashboard, show them.
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        search._ot_study.set_metric_names([o.metric for o in objectives])
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            num_samples=num_trials,
            max_concurrent_trials=concurrent,
            # Trials evaluated every epoch stop themselves at the budget, keeping their epochs;
            # the others are stopped by Tune.
            time_budget_s=None
            if deadline is None or sweep.run.evaluation.every_epoch
            else max(deadline - time.time(), 1.0),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.join(sweep.name),
            failure_config=tune.FailureConfig(max_failures=sweep.fault_tolerance.trial_retries),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def mark_interrupted(study_path: Path, study_name: str, log: Log) -> None:
    """Optuna trials still RUNNING after the sweep were asked by a driver that was killed before
    Tune saved them; their Tune trial never runs. They are marked FAIL (user attr `interrupted`),
    so the study holds each finished trial once and no phantom running one."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        log(f"[sweep] Optuna trial {trial.number} was interrupted before it started; marked FAIL")
