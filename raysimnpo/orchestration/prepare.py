"""The sweep's prepare stage: Original and Retrain fine-tuned once (in Ray tasks, or on the trials'
TorchTrainer workers), evaluated, shared with the cache and the storage, NPO's reference
log-probs, and their rows in the results tables."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import ray

from .. import results
from ..benchmarks.registry import benchmark
from ..cache import mirror_prepared
from ..config.sweep import SweepConfig
from ..errors import UserInputError
from ..methods import needs_of
from ..orchestration.cluster import trials_use_torch_trainer
from ..orchestration.trial import PreparedModels, SharedWorkspace
from ..recipes import prepare as prepared_models
from ..recipes.evaluate import evaluation_key
from ..recipes.workspace import Log, Workspace, reference_examples, workspace
from ..results.storage import Storage, exists, open_storage


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
def _prepare_remote(ws: Workspace, storage_uri: str) -> dict[str, Any]:
    import torch

    run = ws.config
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    storage = open_storage(storage_uri)
    # A remote storage's prepared models are made (or fetched) in this node's cache, then uploaded.
    root = Path(run.cache_dir) / "prepared" if storage.remote else Path(storage.uri) / "prepared"
    local_dirs = prepared_models.prepared_dirs(run, root)
    marker = f"eval-{evaluation_key(run)}"
    if storage.remote:
        _sync_prepared(storage, local_dirs, marker, upload=False)
    else:
        _share_with_cache(run, root, into_storage=True)
    prepared = prepared_models.prepare(ws, log=lambda m: print(m, flush=True), root=root)
    if storage.remote:
        _sync_prepared(storage, local_dirs, marker, upload=True)
    else:
        _share_with_cache(run, root, into_storage=False)
    retrain = prepared.retrain
    reference = prepared_models.retrain_reference(ws, retrain)

    def location(model: prepared_models.PreparedModel) -> str:
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
    another one, the noise ceiling's second Retrain included); after, the cache takes what the
    storage made. Hard links: no second copy on disk."""
    cache_root = Path(run.cache_dir).expanduser() / "prepared"
    for here, cached in zip(
        prepared_models.prepared_folders(run, root),
        prepared_models.prepared_folders(run, cache_root),
        strict=True,
    ):
        source, target = (cached, here) if into_storage else (here, cached)
        for part in mirror_prepared(source, target):
            if into_storage:
                print(f"[prepare] {here.name}/{part}: reused from {source}", flush=True)


@ray.remote
def _prepare_one_remote(ws: Workspace, root: str, name: str) -> float:
    """Fine-tune one prepared model (`recipes.prepare.prepare_one`) in its own task; returns its seconds."""
    import torch

    started = time.monotonic()
    run = ws.config
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    _share_with_cache(run, Path(root), into_storage=True)
    prepared_models.prepare_one(ws, name, Path(root), log=lambda m: print(m, flush=True))
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
    original_dir, retrain_dir = prepared_models.prepared_dirs(run, root)
    cache_root = Path(run.cache_dir).expanduser() / "prepared"
    wanted = []
    for name, here, cached in zip(
        ("Retrain", "Original"),
        (retrain_dir, original_dir),
        prepared_models.prepared_dirs(run, cache_root),
        strict=True,
    ):
        made = any((d / "model" / "config.json").is_file() for d in (here, cached))
        if (
            not made
            and prepared_models.as_is_model(run, name) is None
            and (name == "Original" or benchmark(run.benchmark).has_retrain(run))
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


def finetunes_on_workers(
    sweep: SweepConfig, storage: Storage, ws: Workspace
) -> list[prepared_models.FineTune]:
    """The models `prepare_on_workers` fine-tunes: those of `recipes.prepare.fine_tunes` made neither in the
    storage nor in the cache. Each must split its batches over the trial's workers
    (`recipes.prepare.check_finetune_batches`; the sweep CLI asks before Ray starts)."""
    run = sweep.run
    cache_root = Path(run.cache_dir).expanduser().resolve() / "prepared"
    root = cache_root if storage.remote else Path(storage.uri) / "prepared"
    wanted = []
    for job in prepared_models.fine_tunes(run, root):
        made = any((d / job.folder.name / "model" / "config.json").is_file() for d in (root, cache_root))
        if storage.remote:
            made = made or storage.is_file("prepared", job.folder.name, "model", "config.json")
        if not made:
            prepared_models.check_finetune_batches(ws, job.kind, sweep.resources.workers)
            wanted.append(job)
    return wanted


def check_unlearn_batches(sweep: SweepConfig, ws: Workspace) -> None:
    """Every `unlearn.batch_size` a trial can get (the run's, or each value of its method's search
    range) must split over the trial's workers (`recipes.unlearn.batch_mistake`): refused before
    Ray starts, not in a trial hours into the sweep. The retain set counts where a method's retain
    weight is, or can be searched to be, above 0."""
    from ..methods import METHODS
    from ..recipes.unlearn import batch_mistake
    from ..recipes.workspace import training_examples

    world = sweep.resources.workers
    if world <= 1:
        return
    sizes = {
        "forget": len(reference_examples(ws)[0]),
        "retain": len(training_examples(ws, "retain", ws.config.unlearn.max_length)),
    }
    for method in sweep.search.methods:
        space = sweep.search.space.get(method, {})
        run = sweep.trial_run_config({"method": method})
        weight = space.get("method.retain_weight")
        uses_retain = METHODS[method].retain_weight(run.method) > 0 or (
            weight is not None and weight.largest() > 0
        )
        sets = sizes if uses_retain else {"forget": sizes["forget"]}
        searched = space.get("unlearn.batch_size")
        if searched is None:
            candidates = [("run.unlearn.batch_size", run.unlearn.batch_size)]
        elif searched.choices is not None:
            candidates = [(f"search.space.{method}.unlearn.batch_size", int(c)) for c in searched.choices]
        else:
            assert searched.low is not None and searched.high is not None
            ends = range(int(searched.low), int(searched.high) + 1)
            candidates = [(f"search.space.{method}.unlearn.batch_size", b) for b in ends]
        failing = [(setting, b, m) for setting, b in candidates if (m := batch_mistake(sets, b, world))]
        if failing:
            setting, batch, mistake = failing[0]
            others = [str(b) for _, b, _ in failing[1:]]
            also = f" (so do {', '.join(others[:10])}{', ...' if len(others) > 10 else ''})" if others else ""
            raise UserInputError(f"{setting}: {batch}{also}: {mistake}")


def prepare_on_workers(
    sweep: SweepConfig, storage: Storage, ws: Workspace, shared: SharedWorkspace, log: Log
) -> None:
    """When the trials run on TorchTrainer workers, the models the prepare fine-tunes (Retrain, the
    Original, the noise ceiling's second Retrain: `recipes.prepare.fine_tunes`) are fine-tuned on a
    TorchTrainer with the trial's workers and resources, FSDP2-sharded when there are several (a
    7B model with AdamW does not fit one GPU). Each rank calls `recipes.prepare.finetune_weights`, the step
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
    sweep: SweepConfig, ws: Workspace, original: str, out: str, gpus: float, cpus: float
) -> None:
    """NPO / IdkDPO reference NLLs of the forget answers and refusals, once per sweep, scored by the
    Original in a Ray Data actor and stored next to it as Parquet (`out`: a path or a URI)."""
    import pyarrow as pa

    from ..orchestration.eval_pipeline import reference_nll_with_ray_data

    forget, refusals = reference_examples(ws)
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
    ws: Workspace | None = None,
    shared: SharedWorkspace | None = None,
) -> PreparedModels:
    """Original and Retrain (cached by content hash under `<storage>/prepared`), their result rows,
    and the reference NLLs when a searched method needs them. `ws`: the sweep's workspace (built
    here when not given). The fine-tuning runs where the trials' unlearning runs: on TorchTrainer
    workers (`prepare_on_workers`) when the trials use them, else in Ray tasks; the evaluation in
    `_prepare_remote`."""
    ws = workspace(sweep.run) if ws is None else ws
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
    # ℓ_ref depends on how the forget answers are encoded (data, tokenizer, seed, unlearn.max_length):
    # the workspace's key names the file, so a sweep with another encoding never reads this one's
    reference = f"{prepared['original'].rsplit('/', 1)[0]}/reference-nll-{ws.key}.parquet"
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
        reference_nll_key=ws.key,
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
