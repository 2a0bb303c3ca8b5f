"""Unlearning on several workers: Ray Train's TorchTrainer around the one training loop (DESIGN §7).

`unlearn_with_torch_trainer` starts `num_workers` Ray Train workers (torch.distributed on gloo for
CPUs, NCCL for GPUs). Each worker rebuilds the run's `Workspace` from the config and calls the one
unlearning recipe, `recipes.unlearn.unlearn_model`, which shards the Original with FSDP2
(`raysimnpo.training.sharding`) and runs `raysimnpo.training.loop.train` with the worker's rank, so
every rank walks the same global batches and trains on its slice of each. Per epoch every rank
reports the loop's row to Ray Train (rank 0's is kept); at the end the model is gathered on rank 0,
written as a Hugging Face folder at `output_path` and reported as the run's checkpoint.

Fault tolerance: with `max_failures` > 0 every epoch also reports a training state
(`raysimnpo.training.state`: weights, AdamW moments, schedule, RNG) as a checkpoint. When a worker
dies, Ray Train restarts the worker group and the new workers resume from the last one, so the run
finishes with the weights an uninterrupted run would have.

Fine-tuning the Original and Retrain when the trials run on workers (`finetune_with_torch_trainer`)
is the same: each rank calls the prepare's fine-tuning step, `recipes.prepare.finetune_weights`, and rank 0
writes each model into its prepared folder.

`num_workers=0` is Ray Train's local mode: the same worker function runs in the calling process,
unsharded, without Ray workers (the single-process CPU path of DESIGN §7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointUploadMode

# What ray.train.{RunConfig, FailureConfig, ScalingConfig, TrainingFailedError} and
# ray.train.torch.TorchTrainer are in Ray 2.60 (Train V2), imported by their V2 names so that type
# checkers see the V2 signatures (local mode, worker_runtime_env, Result.return_value).
from ray.train.v2.api.config import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.v2.api.config import RunConfig as TrainRunConfig
from ray.train.v2.api.exceptions import TrainingFailedError
from ray.train.v2.api.result import Result
from ray.train.v2.torch.torch_trainer import TorchTrainer

from ..config.run import RunSettings
from ..errors import UserInputError
from ..methods import CLOSED_FORM_WEIGHTS, METHODS, MethodParams, register
from ..orchestration.epochs import EpochEvaluation, epoch_stop_rule
from ..recipes.evaluate import EpochEvaluator
from ..recipes.prepare import FineTune, finetune_weights
from ..recipes.unlearn import unlearn_model
from ..recipes.workspace import Workspace, load_prepared_model, workspace
from ..results.storage import open_storage
from ..training import sharding
from ..training.loop import GradientWeightLog, TrainingDiverged
from ..training.state import STATE_FILE, save_training_state, saved_extra

CHECKPOINT_DIR_NAME = "model"


def unlearn_with_torch_trainer(
    config: RunSettings,
    original_path: str,
    output_path: str,
    *,
    num_workers: int,
    use_gpu: bool,
    reference_nll: Sequence[Sequence[float]] | None,
    storage_path: str,
    name: str,
    max_failures: int = 0,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    workspace: Any = None,
    method: MethodParams | None = None,
    epoch_evaluation: EpochEvaluation | None = None,
) -> dict[str, Any]:
    """Unlearn the Original at `original_path` with `config.method` on `num_workers` Ray Train
    workers (FSDP2 when more than one) and write the result as a Hugging Face folder at `output_path`.

    `reference_nll`: the pair (ℓ_ref of the forget answers, ℓ_ref of their refusals) of the Original
    (eq. 2), each in forget order, as `recipes.unlearn.unlearn_inputs` takes it, for the methods that
    need them (NPO, IdkDPO); None makes each worker score them with the Original before sharding.
    Ignored by the other methods.

    `storage_path`/`name`: Ray Train's run folder (`<storage_path>/<name>`). When `output_path`
    lies inside it, the reported checkpoint is that folder; otherwise Ray Train copies the folder
    into the run folder as `model/` (so a cloud `storage_path` receives it). On several nodes,
    `output_path` must be storage that rank 0's node writes and the caller reads. `max_failures`:
    worker-group restarts; restarted workers resume from the last epoch's training state.

    `method`: the method's hyperparameters when they are not `config.method` (e.g. a method added
    with `methods.register`, which a RunSettings does not know); its registry entry goes to the workers.

    `epoch_evaluation`: evaluate after every epoch on the workers (every rank takes part, rank 0
    reports), keep the selectable epochs' weights beside `output_path`, and stop early when the
    sweep's EpochFront says so; the result then has "evaluation" (the last epoch's metrics and
    examples) and "stopped_at_epoch".

    Returns {"metrics": the last reported row (last epoch's losses, learning rate, epoch,
    training_seconds, resumed_from_epoch), "epochs": every epoch's row, "weights": NPO's / SimNPO's
    gradient weight rows (`training.GradientWeightLog`; [] for other methods), "checkpoint_path",
    "output_path", "seconds"}.
    Raises UserInputError for a setting the workers cannot run, TrainingDiverged when the loss
    became non-finite, and Ray's TrainingFailedError for anything else that failed on a worker.
    """
    check_trainer_settings(config, original_path, num_workers=num_workers, use_gpu=use_gpu)
    if reference_nll is not None and (
        len(reference_nll) != 2 or not all(hasattr(v, "__len__") for v in reference_nll)
    ):
        raise UserInputError(
            f"reference_nll: {len(reference_nll)} items; allowed: None or (forget ℓ_ref, refusal ℓ_ref), "
            "two sequences in forget order"
        )
    config = with_absolute_paths(config)
    output = Path(output_path).expanduser().resolve()
    storage = run_storage(storage_path)
    in_run_folder = "://" not in storage and output.is_relative_to(Path(storage) / name)
    started = time.perf_counter()
    result = fit_workers(
        train_loop_per_worker,
        {
            "config": config.model_dump(mode="json"),
            "original_path": str(Path(original_path).expanduser().resolve()),
            "output_path": str(output),
            "reference_nll": None
            if reference_nll is None
            else [[float(x) for x in v] for v in reference_nll],
            "upload_checkpoint": not in_run_folder,
            "epoch_checkpoints": max_failures > 0,
            "workspace": workspace,  # the sweep's workspace (an object ref), or None: built per worker
            "params": method,
            "method": None if method is None else METHODS[method.name],
            "epoch_evaluation": epoch_evaluation,
        },
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        storage=storage,
        name=name,
        max_failures=max_failures,
        # The last epoch's state until the model is reported; then only the model is kept.
        checkpoint_config=CheckpointConfig(num_to_keep=1),
    )
    assert result.checkpoint is not None, "the train loop reports its checkpoint last"
    returned = dict(result.return_value or {})
    return {
        "metrics": dict(result.metrics or {}),
        "epochs": list(returned.get("epochs", [])),
        "weights": list(returned.get("weights", [])),
        "evaluation": returned.get("evaluation"),
        "stopped_at_epoch": returned.get("stopped_at_epoch"),
        "checkpoint_path": result.checkpoint.path,
        "output_path": str(output),
        "seconds": time.perf_counter() - started,
    }


def finetune_with_torch_trainer(
    config: RunSettings,
    jobs: Sequence[FineTune],
    *,
    num_workers: int,
    use_gpu: bool,
    storage_path: str,
    name: str,
    max_failures: int = 0,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    workspace: Any = None,
    upload_to: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the prepared models `jobs` (`recipes.prepare.fine_tunes`) one after the other on
    `num_workers` Ray Train workers (FSDP2 when more than one): each rank calls
    `recipes.prepare.finetune_weights`, the step the in-process prepare calls, and rank 0 writes each
    model to `<job.folder>/model`. One worker group makes them all (a start costs more than a tiny
    model's fine-tuning).

    `upload_to`: a remote storage URI; rank 0 then also copies each folder's `model/` to
    `<upload_to>/prepared/<folder name>/model` (config.json last: a folder with it is complete).
    `max_failures`: worker-group restarts; restarted workers skip the models already written.
    `workspace`: the sweep's workspace (an object ref), or None: built per worker.

    Returns {"models": one row per model fine-tuned here (name, workers, epochs: the per-epoch rows,
    seconds), "seconds"}. Raises UserInputError for a setting the workers cannot run.
    """
    check_workers(config, num_workers=num_workers, use_gpu=use_gpu)
    config = with_absolute_paths(config)
    storage = run_storage(storage_path)
    started = time.perf_counter()
    result = fit_workers(
        finetune_loop_per_worker,
        {
            "config": config.model_dump(mode="json"),
            "jobs": [dataclasses.replace(j, folder=Path(j.folder).expanduser().resolve()) for j in jobs],
            "workspace": workspace,
            "upload_to": upload_to,
        },
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        storage=storage,
        name=name,
        max_failures=max_failures,
    )
    returned = dict(result.return_value or {})
    return {"models": list(returned.get("models", [])), "seconds": time.perf_counter() - started}


def run_storage(storage_path: str) -> str:
    """Ray Train's storage_path: a URI as given, a local path made absolute (workers run elsewhere)."""
    return storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())


def fit_workers(
    loop: Any,
    loop_config: dict[str, Any],
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    gpus_per_worker: float,
    storage: str,
    name: str,
    max_failures: int,
    checkpoint_config: CheckpointConfig | None = None,
) -> Result:
    """Run `loop(loop_config)` on a TorchTrainer of `num_workers` workers, run folder `<storage>/<name>`;
    `max_failures` worker-group restarts. A worker's UserInputError or TrainingDiverged is raised as
    itself (`worker_cause`)."""
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})},
        ),
        run_config=TrainRunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures),
            checkpoint_config=checkpoint_config,
            worker_runtime_env=worker_env(),
        ),
    )
    try:
        return cast(Result, trainer.fit())
    except TrainingFailedError as exc:
        raise worker_cause(exc) from exc


def check_trainer_settings(
    config: RunSettings, original_path: str, *, num_workers: int, use_gpu: bool
) -> None:
    """What can be checked before any worker starts; one UserInputError line each."""
    if not (Path(original_path).expanduser() / "config.json").is_file():
        raise UserInputError(
            f"{original_path}: not a Hugging Face model folder (no config.json); pass the Original's folder"
        )
    check_workers(config, num_workers=num_workers, use_gpu=use_gpu)
    world_size = max(1, num_workers)
    if world_size == 1:
        return
    if config.unlearn.batch_size < world_size:
        raise UserInputError(
            f"unlearn.batch_size: {config.unlearn.batch_size} cannot be split over {world_size} workers; "
            f"allowed: >= {world_size}"
        )


def check_workers(config: RunSettings, *, num_workers: int, use_gpu: bool) -> None:
    """The worker count and devices, for any TorchTrainer of a run; one UserInputError line each."""
    if num_workers < 0:
        raise UserInputError(f"num_workers: {num_workers}; allowed: 0 (in this process) or more workers")
    if use_gpu and config.device == "cpu":
        raise UserInputError("device: cpu but use_gpu is set; allowed with GPU workers: auto, cuda")
    if not use_gpu and num_workers > 0 and config.device == "cuda":
        raise UserInputError("device: cuda but use_gpu is off, so the workers see no GPU; allowed: auto, cpu")


def worker_env() -> dict[str, Any] | None:
    """The workers' runtime env: this Ray's address, so that a worker never joins another Ray that
    shares the host."""
    if not ray.is_initialized():
        return None
    return {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}


def with_absolute_paths(config: RunSettings) -> RunSettings:
    """Ray Train workers run in the run folder, so relative paths in the config are resolved here."""
    update: dict[str, Any] = {"cache_dir": str(Path(config.cache_dir).expanduser().resolve())}
    source = config.data.source
    if source.kind == "local" and source.path:
        local = source.model_copy(update={"path": str(Path(source.path).expanduser().resolve())})
        update["data"] = config.data.model_copy(update={"source": local})
    if Path(config.model.name).expanduser().is_dir():
        folder = str(Path(config.model.name).expanduser().resolve())
        update["model"] = config.model.model_copy(update={"name": folder})
    return config.model_copy(update=update)


def worker_cause(error: Exception) -> Exception:
    """The user-facing error behind a failed run: a worker's UserInputError or TrainingDiverged
    (Ray Train keeps each rank's exception in `worker_failures`), else Ray's error unchanged."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], UserInputError | TrainingDiverged):
            return failures[rank]
    return error


# ------------------------------------------------------------------------------------ on a worker


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One Ray Train worker: `recipes.unlearn.unlearn_model` (the one unlearning recipe; it shards the
    model with FSDP2 when there are several ranks) -> HF folder gathered on rank 0.

    Returns {"epochs": the per-epoch rows, "weights": the gradient weight rows} (Ray Train keeps
    rank 0's as the run's return value).
    """
    context = ray.train.get_context()
    rank = context.get_world_rank()
    config = RunSettings.model_validate(loop_config["config"])
    method = loop_config.get("method")
    if method is not None and method.name not in METHODS:  # a method registered by the caller
        register(method)
    params = config.method if loop_config.get("params") is None else loop_config["params"]
    ws = _workspace(config, first=context.get_local_rank() == 0, shared=loop_config.get("workspace"))
    original = load_prepared_model(Path(loop_config["original_path"]), config)
    loaded_dtype = original.dtype
    given = loop_config["reference_nll"]

    def report(row: dict[str, Any]) -> None:
        ray.train.report(row)

    weights = GradientWeightLog(params) if params.name in CLOSED_FORM_WEIGHTS else None
    per_epoch: EpochEvaluation | None = loop_config.get("epoch_evaluation")
    evaluator = stop = None
    if per_epoch is not None:
        keep = Path(loop_config["output_path"])
        evaluator = EpochEvaluator(ws, per_epoch.retrain_reference, per_epoch.objectives, keep=keep)
        if rank == 0:  # rank 0 asks; the loop gives every rank its answer
            metrics = [m for m, _ in per_epoch.objectives]
            stop = epoch_stop_rule(per_epoch.front, per_epoch.deadline, metrics, per_epoch.trial_id)

    def report_with_state(rows: list[dict[str, float]], optimizer: Any, scheduler: Any) -> None:
        extra = {"weights": weights.rows if weights is not None else []}
        with tempfile.TemporaryDirectory(prefix="raysimnpo-state-") as scratch:
            folder = Path(scratch) / "state"
            # a collective (rank 0 writes); `original` is the model being trained, sharded in place
            save_training_state(folder, original, optimizer, scheduler, rows, extra)
            ray.train.report(
                rows[-1],
                checkpoint=Checkpoint.from_directory(str(folder)) if rank == 0 else None,
                checkpoint_dir_name=f"epoch-{len(rows)}",
            )

    saved = ray.train.get_checkpoint() if loop_config["epoch_checkpoints"] else None
    with saved.as_directory() if saved is not None else contextlib.nullcontext(None) as resume_dir:
        resume = resume_dir if resume_dir is not None and (Path(resume_dir) / STATE_FILE).is_file() else None
        if resume is not None and weights is not None:
            weights.rows = list(saved_extra(resume)["weights"])
        model, summary = unlearn_model(
            ws,
            original,
            params,
            None if loop_config["epoch_checkpoints"] else report,
            reference_nll=None if given is None else (given[0], given[1]),
            on_forget_batch=weights,
            epoch_end=report_with_state if loop_config["epoch_checkpoints"] else None,
            resume_from=resume,
            after_epoch=evaluator,
            stop_after=stop,
        )
    output = Path(loop_config["output_path"])
    sharded = context.get_world_size() > 1
    if evaluator is None or not evaluator.final_checkpoint(output, int(summary.epochs[-1]["epoch"])):
        sharding.save_hf_checkpoint(
            model, ws.tokenizer, ws.prompt_format, output, dtype=loaded_dtype if sharded else None
        )
    final = {
        **summary.epochs[-1],
        "training_seconds": summary.seconds,
        "evaluation_seconds": summary.after_epoch_seconds,
        "resumed_from_epoch": summary.resumed_from_epoch,
    }
    mode = CheckpointUploadMode.SYNC if loop_config["upload_checkpoint"] else CheckpointUploadMode.NO_UPLOAD
    checkpoint = Checkpoint.from_directory(str(output)) if rank == 0 else None
    ray.train.report(
        final, checkpoint=checkpoint, checkpoint_dir_name=CHECKPOINT_DIR_NAME, checkpoint_upload_mode=mode
    )
    last = None if evaluator is None or evaluator.last is None else evaluator.last
    return {
        "epochs": summary.epochs,
        "weights": weights.rows if weights is not None else [],
        "evaluation": None if last is None else {"metrics": last.metrics, "examples": last.examples},
        "stopped_at_epoch": summary.stopped_at_epoch,
    }


def finetune_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One Ray Train worker of `finetune_with_torch_trainer`: `recipes.prepare.finetune_weights` for each job
    (sharded with FSDP2 when there are several ranks; rank 0 writes the folder). A job whose folder
    rank 0 already has (written before a worker-group restart) is skipped by every rank."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    config = RunSettings.model_validate(loop_config["config"])
    ws = _workspace(config, first=context.get_local_rank() == 0, shared=loop_config.get("workspace"))

    def log(message: str) -> None:
        print(message, flush=True)

    made = []
    for job in loop_config["jobs"]:
        final = Path(job.folder)
        if sharding.rank0_decides((final / "model" / "config.json").is_file()):
            continue
        started = time.perf_counter()
        model, summary = finetune_weights(
            ws.for_run(config.model_copy(update={"seed": job.seed})), job.name, final, job.kind, log
        )
        del model  # its shards, before the next job's model is loaded
        made.append(
            {
                "name": job.name,
                "workers": context.get_world_size(),
                "epochs": summary.epochs,
                "seconds": time.perf_counter() - started,
            }
        )
    # After every job, so the other ranks are not kept waiting in a collective while rank 0 uploads.
    if rank == 0 and loop_config["upload_to"] is not None:
        storage = open_storage(loop_config["upload_to"])
        for job in loop_config["jobs"]:
            upload_model(storage, Path(job.folder))
    return {"models": made}


def upload_model(storage: Any, final: Path) -> None:
    """Copy `final/model` to `prepared/<final's name>/model` on `storage` unless it is there,
    config.json last: a remote folder with config.json holds the whole model."""
    if storage.is_file("prepared", final.name, "model", "config.json"):
        return
    folder = final / "model"
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == "config.json")
    for path in files:
        storage.upload_file(path, "prepared", final.name, "model", *path.relative_to(folder).parts)


def _workspace(config: RunSettings, *, first: bool, shared: Any = None) -> Workspace:
    """The sweep's workspace from the object store (`shared`), else: the local rank 0 builds (and
    caches) data and tokenizer before the other ranks read them."""
    if shared is not None:
        return ray.get(shared).for_run(config)
    ws = workspace(config) if first else None
    if dist.is_initialized():
        dist.barrier()
    return ws if ws is not None else workspace(config)
