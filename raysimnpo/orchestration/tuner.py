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

import datetime as dt
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .. import results
from ..cache import mirror_prepared
from ..config.sweep import ParamRange, SearchSettings, SweepConfig
from ..maths.metrics import metric_direction
from ..methods import needs_of
from ..orchestration.epochs import (
    FRONT_NAMESPACE,
    add_epoch_points,
    front_actor_name,
    known_points,
    start_front,
)
from ..orchestration.study import ENDED, EPOCH_POINT, INTERRUPTED, finished_trials, study_file
from ..orchestration.tracking import tracking_callbacks
from ..orchestration.trial import PreparedModels, SharedWorkspace, unlearning_trial
from ..recipes import unlearn as recipe
from ..results.storage import Storage, exists, open_storage

Log = Callable[[str], None]


def sampler_for(search: SearchSettings) -> optuna.samplers.BaseSampler:
    name = search.resolved_sampler()
    seed = search.seed
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, search.num_trials // 3)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed)


def _suggest(trial: optuna.Trial, name: str, rng: ParamRange) -> Any:
    if rng.choices is not None:
        return trial.suggest_categorical(name, rng.choices)
    assert rng.low is not None and rng.high is not None
    if rng.integer:
        return trial.suggest_int(name, int(rng.low), int(rng.high), log=rng.log)
    return trial.suggest_float(name, rng.low, rng.high, log=rng.log)


class DefineByRun:
    """Conditional space: the method first, then that method's own ranges, named
    `<method>/<dotted setting>` so that β of NPO and β of SimNPO are separate parameters.
    A class rather than a closure: Tune pickles the searcher into its experiment state."""

    def __init__(self, search: SearchSettings) -> None:
        self.search = search

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        method = trial.suggest_categorical("method", self.search.methods)
        for key, rng in self.search.space.get(method, {}).items():
            _suggest(trial, f"{method}/{key}", rng)
        return None


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
        objectives: list[tuple[str, str]],
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
        shown = " ".join(f"best {short.get(k, k)} {v:.3g}" for k, v in best.items())
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


def _sync_prepared(storage: Storage, local_dirs: tuple[Path, Path], marker: str, *, upload: bool) -> None:
    """Remote storage: fetch the prepared folders whose evaluation `marker` the storage has and
    this node lacks, or whose weights alone it has (fine-tuned on workers, `prepare_on_workers`)
    and this node lacks (before preparing), or upload those the storage lacks (after)."""
    for local in local_dirs:
        remote = storage.is_file("prepared", local.name, marker, "metrics.json")
        here = (local / marker / "metrics.json").is_file()
        if upload and here and not remote:
            storage.upload_folder(local, "prepared", local.name)
        elif not upload and not here:
            weights_only = (
                storage.is_file("prepared", local.name, "model", "config.json")
                and not (local / "model" / "config.json").is_file()
            )
            if remote or weights_only:
                storage.download_folder(local, "prepared", local.name)


@ray.remote
def _prepare_remote(ws: recipe.Workspace, storage_uri: str) -> dict[str, Any]:
    import torch

    run = ws.config
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    storage = open_storage(storage_uri)
    # A remote storage's prepared models are made (or fetched) in this node's cache, then uploaded.
    root = Path(run.cache_dir) / "prepared" if storage.remote else Path(storage.uri) / "prepared"
    local_dirs = recipe.prepared_dirs(run, root)
    marker = f"eval-{recipe.evaluation_key(run)}"
    if storage.remote:
        _sync_prepared(storage, local_dirs, marker, upload=False)
    else:
        _share_with_cache(run, root, into_storage=True)
    prepared = recipe.prepare(ws, log=lambda m: print(m, flush=True), root=root)
    if storage.remote:
        _sync_prepared(storage, local_dirs, marker, upload=True)
    else:
        _share_with_cache(run, root, into_storage=False)
    retrain = prepared.retrain
    reference = recipe.retrain_reference(ws, retrain)

    def location(model: recipe.PreparedModel) -> str:
        folder = model.path.parent.name
        return storage.join("prepared", folder, "model") if storage.remote else str(model.path)

    return {
        "original": location(prepared.original),
        "retrain": None if retrain is None else location(retrain),
        "original_metrics": prepared.original.metrics,
        "retrain_metrics": None if retrain is None else retrain.metrics,
        "original_examples": prepared.original.examples,
        "retrain_examples": None if retrain is None else retrain.examples,
        # The benchmark's: TOFU's Retrain forget truth ratios, MUSE's Retrain AUC, WMDP's None.
        "retrain_reference": reference,
    }


def _share_with_cache(run: Any, root: Path, *, into_storage: bool) -> None:
    """A local storage's prepared models and `<cache_dir>/prepared` (where `python -m raysimnpo.run`
    and remote storages keep theirs) share what they have, by content hash: before preparing, the
    storage takes what the cache has (so a sweep with a new `--storage` reuses the models made for
    another one); after, the cache takes what the storage made. Hard links: no second copy on disk."""
    cache_root = Path(run.cache_dir).expanduser() / "prepared"
    for here, cached in zip(
        recipe.prepared_dirs(run, root), recipe.prepared_dirs(run, cache_root), strict=True
    ):
        source, target = (cached, here) if into_storage else (here, cached)
        for part in mirror_prepared(source, target):
            if into_storage:
                print(f"[prepare] {here.name}/{part}: reused from {source}", flush=True)


@ray.remote
def _prepare_one_remote(ws: recipe.Workspace, root: str, name: str) -> float:
    """Fine-tune one prepared model (`recipe.prepare_one`) in its own task; returns its seconds."""
    import torch

    started = time.monotonic()
    run = ws.config
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    _share_with_cache(run, Path(root), into_storage=True)
    recipe.prepare_one(ws, name, Path(root), log=lambda m: print(m, flush=True))
    _share_with_cache(run, Path(root), into_storage=False)
    return time.monotonic() - started


def prepare_concurrently(
    sweep: SweepConfig, storage: Storage, cpus: float, gpus: int, log: Log, shared: SharedWorkspace
) -> None:
    """When the trials run in their own process (one CPU worker; otherwise `prepare_on_workers`):
    Original and Retrain are fine-tuned independently (only the Original's evaluation needs
    Retrain's), so each gets its own task, with half the prepare CPUs. `_prepare_remote` then evaluates the Original
    against Retrain, reusing both. Models already made (here or in the cache) are not trained again.
    A remote storage prepares in one task, which fetches and uploads the models (`_sync_prepared`)."""
    if storage.remote:
        return
    run = sweep.run
    root = Path(storage.uri) / "prepared"
    original_dir, retrain_dir = recipe.prepared_dirs(run, root)
    cache_root = Path(run.cache_dir).expanduser() / "prepared"
    wanted = []
    for name, here, cached in zip(
        ("Retrain", "Original"),
        (retrain_dir, original_dir),
        recipe.prepared_dirs(run, cache_root),
        strict=True,
    ):
        made = any((d / "model" / "config.json").is_file() for d in (here, cached))
        if (
            not made
            and recipe.as_is_model(run, name) is None
            and (name == "Original" or recipe.benchmark(run.benchmark).has_retrain(run))
        ):
            wanted.append(name)
    if not wanted:
        log(f"[prepare] Original and Retrain were made before (here or in {cache_root}): no fine-tuning")
    if len(wanted) < 2:  # one model to make: `_prepare_remote` makes it with all the prepare CPUs
        return
    each = cpus if gpus else max(1.0, float(int(cpus) // 2))
    log(f"[prepare] fine-tuning {' and '.join(wanted)} at the same time ({int(each)} CPU each)")
    tasks = {
        _prepare_one_remote.options(num_cpus=each, num_gpus=gpus).remote(shared.ref, str(root), name): name
        for name in wanted
    }
    pending = list(tasks)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        seconds = ray.get(done[0])
        log(f"[prepare] {tasks[done[0]]} fine-tuned in {seconds:.0f} s")


def trials_use_torch_trainer(sweep: SweepConfig) -> bool:
    """Whether a trial unlearns on TorchTrainer workers (`trial.unlearn`): several workers, or GPUs."""
    r = sweep.resources
    return r.workers > 1 or r.gpus_per_worker > 0


def finetunes_on_workers(sweep: SweepConfig, storage: Storage, ws: recipe.Workspace) -> list[recipe.FineTune]:
    """The models `prepare_on_workers` fine-tunes: those of `recipe.fine_tunes` made neither in the
    storage nor in the cache. Each must split its batches over the trial's workers
    (`recipe.check_finetune_batches`; the sweep CLI asks before Ray starts)."""
    run = sweep.run
    cache_root = Path(run.cache_dir).expanduser().resolve() / "prepared"
    root = cache_root if storage.remote else Path(storage.uri) / "prepared"
    wanted = []
    for job in recipe.fine_tunes(run, root):
        made = any((d / job.folder.name / "model" / "config.json").is_file() for d in (root, cache_root))
        if storage.remote:
            made = made or storage.is_file("prepared", job.folder.name, "model", "config.json")
        if not made:
            recipe.check_finetune_batches(ws, job.kind, sweep.resources.workers)
            wanted.append(job)
    return wanted


def prepare_on_workers(
    sweep: SweepConfig, storage: Storage, ws: recipe.Workspace, shared: SharedWorkspace, log: Log
) -> None:
    """When the trials run on TorchTrainer workers, the models the prepare fine-tunes (Retrain, the
    Original, the noise ceiling's second Retrain: `recipe.fine_tunes`) are fine-tuned on a
    TorchTrainer with the trial's workers and resources, FSDP2-sharded when there are several (a
    7B model with AdamW does not fit one GPU). Each rank calls `recipe.finetune_weights`, the step
    the in-process prepare calls, and rank 0 writes each model where that prepare would: the
    storage's prepared folder, or on a remote storage this node's cache, uploaded to the storage.
    `_prepare_remote` then only evaluates them. Models already made (in the storage or the cache)
    and released models are not trained."""
    from ..orchestration.trainer import finetune_with_torch_trainer

    run, r = sweep.run, sweep.resources
    wanted = finetunes_on_workers(sweep, storage, ws)
    if not wanted:
        return
    shape = f"{r.workers} FSDP2 workers" if r.workers > 1 else "1 worker"
    log(f"[prepare] fine-tuning {', '.join(j.name for j in wanted)} on a TorchTrainer of {shape}")
    outcome = finetune_with_torch_trainer(
        run,
        wanted,
        num_workers=r.workers,
        use_gpu=r.gpus_per_worker > 0,
        storage_path=storage.join(sweep.name, "train"),
        name=f"prepare-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}",
        max_failures=sweep.fault_tolerance.worker_restarts,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        workspace=shared.ref,
        upload_to=storage.uri if storage.remote else None,
    )
    for model in outcome["models"]:
        loss = model["epochs"][-1]["loss"]
        log(
            f"[prepare] {model['name']} fine-tuned on {model['workers']} workers in {model['seconds']:.0f} s, loss {loss:.4f}"
        )


def write_reference_nll(
    sweep: SweepConfig, ws: recipe.Workspace, original: str, out: str, gpus: float, cpus: float
) -> None:
    """NPO / IdkDPO reference NLLs of the forget answers and refusals, once per sweep, scored by the
    Original in a Ray Data actor and stored next to it as Parquet (`out`: a path or a URI)."""
    import pyarrow as pa

    from ..orchestration.eval_pipeline import reference_nll_with_ray_data

    forget, refusals = recipe.reference_examples(ws)
    nll = reference_nll_with_ray_data(
        original,
        {"forget": forget, "refusal": refusals},
        sweep.run.evaluation.batch_size,
        num_cpus=cpus,
        num_gpus=gpus,
        threads=int(cpus),
    )
    # Raw-text benchmarks (MUSE, WMDP) have no refusals: that column is NaN (IdkDPO is refused there).
    refusal = nll["refusal"] if refusals else [float("nan")] * len(forget)
    table = pa.table({"forget_nll": nll["forget"], "refusal_nll": refusal})
    results.write_parquet(table, out)


def prepare_stage(
    sweep: SweepConfig,
    storage: Storage,
    log: Log,
    ws: recipe.Workspace | None = None,
    shared: SharedWorkspace | None = None,
) -> PreparedModels:
    """Original and Retrain (cached by content hash under `<storage>/prepared`), their result rows,
    and the reference NLLs when a searched method needs them. `ws`: the sweep's workspace (built
    here when not given). The fine-tuning runs where the trials' unlearning runs: on TorchTrainer
    workers (`prepare_on_workers`) when the trials use them, else in Ray tasks; the evaluation in
    `_prepare_remote`."""
    ws = recipe.workspace(sweep.run) if ws is None else ws
    shared = SharedWorkspace(ray.put(ws)) if shared is None else shared
    root = storage.join("prepared")
    gpus = 1 if sweep.resources.gpus_per_worker > 0 else 0
    # Nothing else runs while preparing: on CPU, one node's cores (at most 8) go to it.
    cpus = (
        max(1.0, sweep.resources.cpus_per_worker)
        if gpus
        else float(min(8, ray.cluster_resources().get("CPU", 1)))
    )
    log(f"[prepare] Original and Retrain under {root}")
    if trials_use_torch_trainer(sweep):
        prepare_on_workers(sweep, storage, ws, shared, log)
    else:
        prepare_concurrently(sweep, storage, cpus, gpus, log, shared)
    prepared = ray.get(_prepare_remote.options(num_cpus=cpus, num_gpus=gpus).remote(shared.ref, storage.uri))
    reference = f"{prepared['original'].rsplit('/', 1)[0]}/reference-nll-seed{sweep.run.seed}.parquet"
    needs_reference = any(
        "reference_nll" in needs_of(sweep.trial_run_config({"method": m}).method)
        for m in sweep.search.methods
    )
    if needs_reference and not exists(reference):
        log("[prepare] reference log-probs of the forget set (NPO / IdkDPO), Ray Data")
        write_reference_nll(sweep, ws, prepared["original"], reference, gpus, cpus)
    write_reference_rows(sweep, storage, prepared)
    return PreparedModels(
        storage=storage.uri,
        run_dir=storage.join(sweep.name),
        original=prepared["original"],
        retrain=prepared["retrain"],
        reference_nll=reference,
        retrain_reference=prepared["retrain_reference"],
        original_metrics=prepared["original_metrics"],
        retrain_metrics=prepared["retrain_metrics"],
    )


def write_reference_rows(sweep: SweepConfig, storage: Storage, prepared: dict[str, Any]) -> None:
    """Original and Retrain as rows of the results tables, next to the trials."""
    root = results.results_root(storage.uri, sweep.name)
    now = dt.datetime.now(dt.UTC)
    for kind in ("original", "retrain"):
        metrics = prepared[f"{kind}_metrics"]
        if metrics is None:  # a benchmark without Retrain (WMDP with a released Original)
            continue
        examples = prepared[f"{kind}_examples"]
        row = {
            "sweep": sweep.name,
            "trial_id": kind,
            "kind": kind,
            "method": kind,
            "params_json": json.dumps({"prepare": sweep.run.prepare.model_dump()}, sort_keys=True),
            "learning_rate": sweep.run.prepare.learning_rate,
            "epochs": sweep.run.prepare.epochs,
            "batch_size": sweep.run.prepare.batch_size,
            "seed": sweep.run.seed,
            "status": "completed",
            "error": None,
            "started_at": now,
            "finished_at": now,
            "checkpoint": prepared[kind],
            "forget_quality": metrics.get("forget_quality"),
            "model_utility": metrics.get("model_utility"),
        }
        results.write_trial_results(
            root,
            kind,
            trials=[row],
            metrics=[
                {
                    "sweep": sweep.name,
                    "trial_id": kind,
                    "stage": "final",
                    "epoch": None,
                    "metric": k,
                    "value": v,
                }
                for k, v in metrics.items()
            ],
            examples=[dict(e, sweep=sweep.name, trial_id=kind) for e in examples],
        )


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
    ws: recipe.Workspace | None = None,
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
    ws = recipe.workspace(sweep.run) if ws is None else ws
    shared = SharedWorkspace(ray.put(ws))
    prepared = prepare_stage(sweep, storage, log, ws, shared)
    headline = ws.benchmark.headline_metrics
    for kind, metrics in (("original", prepared.original_metrics), ("retrain", prepared.retrain_metrics)):
        if metrics is not None:
            log(f"[prepare] {kind.capitalize()} {' '.join(f'{k} {metrics[k]:.3g}' for k in headline)}")
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
    if sweep.search.early_stop is not None:  # kept alive by this driver until the sweep ends
        front = start_front(
            sweep,
            known_points(
                results.results_root(storage.uri, sweep.name), [o.metric for o in sweep.search.objectives]
            ),
        )
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
    remaining = sweep.search.num_trials - (finished_trials(study, sweep.name) if resume else 0)
    if remaining > 0:
        name = "tune" if not experiments else f"tune-{len(experiments) + 1}"
        if experiments:
            log(f"[sweep] extending {sweep.name} by {remaining} trials (experiment {name})")
        new_tuner(sweep, storage, study, trainable, name, remaining, callbacks, deadline).fit()
        mark_interrupted(study, sweep.name, log)
    sync_study(study, storage, sweep.name)
    if sweep.search.early_stop is not None:
        ray.kill(front)
    return study


class SweepSearch(OptunaSearch):
    """Tune's OptunaSearch with the sweep's rules.

    - Once the time budget is spent (`deadline`, unix seconds) it proposes no more trials; the running
      ones end themselves after their epoch when they evaluate every epoch
      (`epochs.epoch_stop_rule`), else Tune stops them.
    - A trial stopped before its planned epochs (early stopping, the budget) is told PRUNED: the
      `unlearn.epochs` it was given never ran.
    - `epoch_points`: with a trial's result, its epochs are added to the study as points of their
      own (`epochs.add_epoch_points`).
    - `front`: the name of the sweep's EpochFront actor, told which trials the search has been told of.
    - `lag` (`search.deterministic`: L = 2k - 1 for k concurrent trials): suggestion i is made from
      exactly the results of trials 0..i-L, told in suggestion order, and waits until they have
      ended; trial i's early stopping judges it against those trials only (`FrontRule.snapshot`). So
      the suggestions do not depend on which running trial ends first, and a sweep reruns to the same
      numbers. L >= k keeps k trials running; the slack of L = 2k - 1 lets a long trial be overtaken
      by 2k - 2 later ones before a slot waits for it (`perf/deterministic_search.py`). None: each
      trial is told as it ends and a suggestion uses whatever has ended by then.
    """

    def __init__(
        self,
        *args: Any,
        deadline: float | None = None,
        epoch_points: bool = False,
        front: str | None = None,
        lag: int | None = None,
        num_trials: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deadline, self.epoch_points, self.front = deadline, epoch_points, front
        self.lag, self.num_trials = lag, num_trials
        self.closed = False  # no more suggestions: the budget is spent
        self.order: list[str] = []  # trials in suggestion order
        self.told = 0  # trials order[:told] have been told
        self.ended: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # (result, error) not told yet

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            self.closed = True
            self._tell_ready()
            return Searcher.FINISHED
        if self.lag is not None:
            self._tell_ready()
            if self.told < len(self.order) - self.lag + 1:
                return None  # trial i - L still runs
        suggestion = super().suggest(trial_id)
        self.order.append(trial_id)
        if self.front is not None and self.lag is not None:
            ray.get(self._front().snapshot.remote(trial_id))
        return suggestion

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id in self.ended:
            return  # told once: a repeated completion would add its epoch points twice
        self.ended[trial_id] = (result, error)
        if self.lag is None:
            self._tell(trial_id)
        else:
            self._ot_trials[trial_id].set_user_attr(ENDED, True)  # counted as done by `Progress`
            self._tell_ready()

    def _tell_ready(self) -> None:
        """Tell, in suggestion order, the ended trials that every later suggestion may see."""
        assert self.lag is not None or self.closed
        done = self.closed or (self.num_trials is not None and len(self.order) >= self.num_trials)
        visible = len(self.order) if done or self.lag is None else len(self.order) - self.lag + 1
        while self.told < min(visible, len(self.order)) and self.order[self.told] in self.ended:
            self._tell(self.order[self.told])
            self.told += 1

    def _tell(self, trial_id: str) -> None:
        result, error = self.ended.pop(trial_id)
        stopped = bool(result and result.get("stopped_early"))
        super().on_trial_complete(trial_id, None if stopped else result, error)  # None: PRUNED
        if self.epoch_points and result and not error:
            ot_trial = self._ot_trials[trial_id]
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            add_epoch_points(
                self._ot_study, trial_id, ot_trial.params, ot_trial.distributions, result, metrics
            )
        if self.front is not None:
            ray.get(self._front().complete.remote([trial_id]))

    def _front(self) -> Any:
        assert self.front is not None
        return ray.get_actor(self.front, namespace=FRONT_NAMESPACE)


def deterministic_lag(concurrent: int) -> int:
    """How many suggestions back a deterministic search's suggestion sees results (`SweepSearch`)."""
    return 2 * concurrent - 1


def new_tuner(
    sweep: SweepConfig,
    storage: Storage,
    study: Path,
    trainable: Any,
    name: str,
    num_trials: int,
    callbacks: list[Any],
    deadline: float | None = None,
) -> tune.Tuner:
    """A Tune experiment `<run>/<name>` of `num_trials` trials proposed by the sweep's Optuna study
    (created, or loaded when it exists: an extension continues the same study), proposing none
    after `deadline`."""
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
