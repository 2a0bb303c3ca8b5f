"""One Tune trial: build the trial's run -> unlearn -> evaluate -> write Parquet -> report.

Unlearning is the one recipe (`recipes.unlearn.unlearn_model`, see `unlearn`): run in the trial's own
process when the trial has one CPU worker (Ray's per-trial start-up would dwarf a tiny model's
training on CPU), and by every worker of a TorchTrainer (FSDP2) otherwise. Evaluation streams the
evaluation questions through Ray Data actors that load the unlearned checkpoint once, or runs
in-process (`evaluation.engine`; `auto`, which sweeps/tofu.yaml sets, evaluates the model still in
memory when the trial unlearned it in its own process on CPU, since starting an evaluation actor and
reloading the checkpoint cost more than evaluating the tiny model).
Each phase's wall time goes to the `metrics` table as stage "timing" rows (`PhaseClock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from pydantic import BaseModel, ConfigDict
from ray import tune
from transformers import PreTrainedModel

from .. import results
from ..benchmarks.base import Evaluation
from ..config.sweep import SweepConfig
from ..maths.metrics import metric_direction
from ..methods import CLOSED_FORM_WEIGHTS
from ..orchestration.cluster import trials_use_torch_trainer
from ..orchestration.epochs import EpochEvaluation, epoch_stop_rule, front_actor_name
from ..recipes.evaluate import EpochEvaluator
from ..recipes.unlearn import unlearn_model
from ..recipes.workspace import Workspace, load_prepared_model, save_model
from ..results.storage import exists, local_copy, open_storage
from ..training.loop import GradientWeightLog, TrainingDiverged

FLAT = ("beta", "gamma", "retain_weight", "alpha")


class TrialFailed(RuntimeError):
    """Raised after a failed trial's row is written, so Tune and Optuna record it as FAIL."""


DIVERGED = "diverged: "  # prefix of the trials table's `error` for a trial stopped by TrainingDiverged


class PreparedModels(BaseModel):
    """What the prepare stage hands to every trial: where the Original and Retrain folders and the
    reference NLLs are, and the Retrain reference the trials' metrics are measured against (the
    benchmark's `retrain_reference`: TOFU's forget truth ratios, MUSE's AUC, None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    storage: str
    run_dir: str
    original: str
    retrain: str | None
    reference_nll: str
    # the workspace key of the encoding the reference NLLs were scored on: a trial whose searched
    # settings change it (e.g. unlearn.max_length) scores its own from the Original
    reference_nll_key: str
    retrain_reference: list[float] | float | None
    original_metrics: dict[str, float]
    retrain_metrics: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class SharedWorkspace:
    """The sweep's workspace in the object store (put there once by the driver). Trials fetch it in
    their `workspace` phase, so the phase's seconds show what handing it over costs."""

    ref: ray.ObjectRef

    def get(self) -> Workspace:
        return ray.get(self.ref)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def trial_row(sweep: SweepConfig, trial_id: str, run: Any, **fields: Any) -> dict[str, Any]:
    method = run.method.model_dump()
    row = {
        "sweep": sweep.name,
        "trial_id": trial_id,
        "kind": "trial",
        "method": run.method.name,
        "params_json": json.dumps({"method": method, "unlearn": run.unlearn.model_dump()}, sort_keys=True),
        "learning_rate": run.unlearn.learning_rate,
        "epochs": run.unlearn.epochs,
        "batch_size": run.unlearn.batch_size,
        "seed": run.seed,
    }
    row.update({k: method.get(k) for k in FLAT})
    row.update(fields)
    return row


class PhaseClock:
    """Wall seconds of each phase of one trial, written to the `metrics` table as stage "timing"
    rows (metric `<phase>_seconds`), so a sweep's users can see where its time goes:

    workspace          the sweep's workspace (data, tokenizer, encoded examples) for this trial's run:
                       handed over through the object store; rebuilt only when the trial's settings
                       change what it holds (`recipes.workspace.Workspace.for_run`)
    load_original      loading the Original and the cached reference NLLs, building the unlearning inputs
    trainer_startup    TorchTrainer trials only: worker start-up, FSDP set-up, gathering (Ray overhead)
    unlearn            the unlearning loop itself (`TrainingSummary.seconds`): compute
    save_checkpoint    writing the unlearned model folder
    eval_startup       Ray Data engine only: dataset planning, actor process start and imports
    load_checkpoint    loading the unlearned model again for evaluation (0 when evaluated in memory)
    evaluate           scoring and generation: compute
    metrics            aggregating the per-example statistics into the benchmark's metrics
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        """Add (or, for a part measured inside a phase, subtract) seconds to a phase."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def rows(self, sweep: str, trial_id: str) -> list[dict[str, Any]]:
        return [
            {
                "sweep": sweep,
                "trial_id": trial_id,
                "stage": "timing",
                "epoch": None,
                "metric": f"{name}_seconds",
                "value": max(0.0, float(value)),
            }
            for name, value in self.seconds.items()
        ]


def metric_rows(
    sweep: str, trial_id: str, final: dict[str, float], epochs: list[dict[str, float]]
) -> list[dict]:
    rows = [
        {
            "sweep": sweep,
            "trial_id": trial_id,
            "stage": "final",
            "epoch": None,
            "metric": k,
            "value": float(v),
        }
        for k, v in final.items()
    ]
    for row in epochs:
        for k, v in row.items():
            if k != "epoch":
                rows.append(
                    {
                        "sweep": sweep,
                        "trial_id": trial_id,
                        "stage": "epoch",
                        "epoch": int(row["epoch"]),
                        "metric": k,
                        "value": float(v),
                    }
                )
    return rows


def load_reference_nll(prepared: PreparedModels, ws: Workspace) -> tuple[np.ndarray, np.ndarray] | None:
    """The sweep's reference NLLs (a local path or a filesystem URI) for a trial whose workspace is
    `ws`. None when they were not computed, or were scored on another encoding of the forget answers
    (a searched `unlearn.max_length`, say): the recipe then scores ℓ_ref with the Original itself."""
    location = prepared.reference_nll
    if ws.key != prepared.reference_nll_key or not exists(location):
        return None
    table = pq.read_table(location)
    return table["forget_nll"].to_numpy(), table["refusal_nll"].to_numpy()


def evaluation_engine(sweep: SweepConfig, run: Any) -> str:
    """The engine a trial evaluates with: `auto` is in-process when the trial unlearned in its own
    process on CPU (the model is already in memory: no actor start, no reload), Ray Data otherwise."""
    engine = str(run.evaluation.engine)
    if engine != "auto":
        return engine
    return "ray_data" if trials_use_torch_trainer(sweep) else "in_process"


@dataclass
class Unlearned:
    """A trial's unlearning outcome: the model (in memory when unlearned in this process), the
    per-epoch rows, where a TorchTrainer stored the checkpoint (None: at the trial's own path), and
    the seconds of the PhaseClock phases it took."""

    model: PreTrainedModel | None
    epochs: list[dict[str, float]]
    stored_checkpoint: str | None
    seconds: dict[str, float]
    evaluation: Any = None  # the last epoch's evaluation, with `evaluation.every_epoch`
    stopped_at_epoch: int | None = None  # set when the sweep's EpochFront stopped the run early


def unlearn(
    sweep: SweepConfig,
    ws: Workspace,
    original: Path,
    checkpoint: Path,
    storage: Any,
    trial_id: str,
    reference: tuple[np.ndarray, np.ndarray] | None,
    recorder: GradientWeightLog | None,
    epochs: list[dict[str, float]],
    shared_workspace: Any = None,
    retrain_reference: Any = None,
    deadline: float | None = None,
) -> Unlearned:
    """The trial's one unlearning path: the recipe `recipes.unlearn.unlearn_model`, run in this process when
    the trial has one CPU worker (Ray's per-trial start-up would dwarf a tiny model's training on
    CPU), else by every worker of a TorchTrainer (FSDP2 when several); both write the unlearned
    model as a Hugging Face folder at `checkpoint`. `epochs` receives the per-epoch rows (also those
    of a run that diverges in this process). `shared_workspace`: the sweep's workspace in the object
    store, which the TorchTrainer workers take instead of building their own.

    With `evaluation.every_epoch`, the model is evaluated after every epoch
    (`recipes.evaluate.EpochEvaluator`, against `retrain_reference`), the epochs that can still be
    selected keep their weights beside the checkpoint, and with `search.early_stop` the sweep's
    EpochFront may end the run after an epoch, as does the end of the sweep's time budget (`deadline`,
    unix seconds); `Unlearned.evaluation` is then the last epoch's evaluation (the run's final one)."""
    run = ws.config
    objectives = [(o.metric, metric_direction(o.metric)) for o in sweep.search.objectives]
    front = front_actor_name(sweep) if sweep.search.early_stop is not None else None
    if not trials_use_torch_trainer(sweep):
        started = time.perf_counter()
        evaluator = (
            EpochEvaluator(ws, retrain_reference, objectives, keep=checkpoint)
            if run.evaluation.every_epoch
            else None
        )
        stop = (
            epoch_stop_rule(front, deadline, [m for m, _ in objectives], trial_id)
            if run.evaluation.every_epoch
            else None
        )
        model, summary = unlearn_model(
            ws,
            original,
            report=epochs.append,
            reference_nll=reference,
            on_forget_batch=recorder,
            after_epoch=evaluator,
            stop_after=stop,
        )
        saving = time.perf_counter()
        last_epoch = int(summary.epochs[-1]["epoch"])
        if evaluator is None or not evaluator.final_checkpoint(checkpoint, last_epoch):
            save_model(model, ws.tokenizer, ws.prompt_format, checkpoint)
        seconds = {
            # the recipe loads the Original and builds the inputs before its loop
            "load_original": saving - started - summary.seconds,
            "unlearn": summary.seconds - summary.after_epoch_seconds,
            "evaluate": summary.after_epoch_seconds,
            "save_checkpoint": time.perf_counter() - saving,
        }
        evaluation = None if evaluator is None else evaluator.last
        return Unlearned(model, epochs, None, seconds, evaluation, summary.stopped_at_epoch)
    from ..orchestration.trainer import unlearn_with_torch_trainer

    started = time.perf_counter()
    outcome = unlearn_with_torch_trainer(
        run,
        str(original),
        str(checkpoint),
        num_workers=sweep.resources.workers,
        use_gpu=sweep.resources.gpus_per_worker > 0,
        reference_nll=None if reference is None else [r.tolist() for r in reference],
        storage_path=storage.join(sweep.name, "train"),
        name=trial_id,
        max_failures=sweep.fault_tolerance.worker_restarts,
        cpus_per_worker=sweep.resources.cpus_per_worker,
        gpus_per_worker=sweep.resources.gpus_per_worker,
        workspace=shared_workspace,
        epoch_evaluation=EpochEvaluation(
            retrain_reference=retrain_reference,
            objectives=objectives,
            front=front,
            trial_id=trial_id,
            deadline=deadline,
        )
        if run.evaluation.every_epoch
        else None,
    )
    loop_seconds = float(outcome.get("metrics", {}).get("training_seconds", 0.0))
    epochs.extend(outcome.get("epochs", []))
    if recorder is not None:
        recorder.rows = outcome["weights"]
    stored = None
    if storage.remote:  # rank 0's node wrote it; Ray Train uploaded it into its run folder
        stored = f"{storage.uri.split('://', 1)[0]}://{outcome['checkpoint_path']}"
    evaluated = float(outcome.get("metrics", {}).get("evaluation_seconds", 0.0))
    evaluation = None
    if outcome.get("evaluation") is not None:
        evaluation = Evaluation(**outcome["evaluation"])
    return Unlearned(
        None,
        epochs,
        stored,
        {
            "trainer_startup": time.perf_counter() - started - loop_seconds,
            "unlearn": loop_seconds - evaluated,
            "evaluate": evaluated,
        },
        evaluation,
        outcome.get("stopped_at_epoch"),
    )


def unlearning_trial(
    params: dict[str, Any],
    *,
    sweep_json: str,
    prepared: PreparedModels,
    workspace: SharedWorkspace,
    deadline: float | None = None,
) -> None:
    """The Tune function trainable (define-by-run params: `method` plus dotted run settings).
    `workspace` is the sweep's, built once by the driver and handed over through the object store;
    `deadline`: when the sweep's time budget ends (unix seconds), after which a trial evaluated
    every epoch stops after its current epoch."""
    sweep = SweepConfig.model_validate_json(sweep_json)
    run = sweep.trial_run_config(params)
    trial_id = tune.get_context().get_trial_id()
    storage = open_storage(prepared.storage)
    root = results.results_root(storage.uri, sweep.name)
    started = now()
    threads = max(1, int(sweep.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    clock = PhaseClock()

    earlier = results.read_trial_row(root, trial_id)  # Tune re-runs a trial whose process died
    if (
        earlier is not None
        and earlier["status"] == "failed"
        and (earlier["error"] or "").startswith(DIVERGED)
    ):
        raise TrialFailed(f"trial {trial_id} {earlier['error']} (not re-run: divergence repeats)")

    with clock.phase("workspace"):
        ws = workspace.get().for_run(run)
    retrain_reference = prepared.retrain_reference
    # The checkpoint is written on this node's disk: in the run folder on a local storage, else in
    # the node's cache, then uploaded to `<run>/checkpoints/<trial id>` (where the row points).
    checkpoint = (
        Path(sweep.run.cache_dir).expanduser() / "checkpoints" / sweep.name / trial_id
        if storage.remote
        else Path(storage.uri) / sweep.name / "checkpoints" / trial_id
    )
    stored_checkpoint = storage.join(sweep.name, "checkpoints", trial_id)
    engine = evaluation_engine(sweep, run)
    epochs: list[dict[str, float]] = []
    recorder = GradientWeightLog(run.method) if run.method.name in CLOSED_FORM_WEIGHTS else None
    model = None
    try:
        t0 = time.perf_counter()
        with clock.phase("load_original"):
            reference = load_reference_nll(prepared, ws)
            original = local_copy(prepared.original, sweep.run.cache_dir)
        unlearned = unlearn(
            sweep,
            ws,
            original,
            checkpoint,
            storage,
            trial_id,
            reference,
            recorder,
            epochs,
            workspace.ref,
            retrain_reference,
            deadline,
        )
        for phase, seconds in unlearned.seconds.items():
            clock.add(phase, seconds)
        stored_checkpoint = unlearned.stored_checkpoint or stored_checkpoint
        model = unlearned.model if engine == "in_process" else None
        evaluated, stopped_at_epoch = unlearned.evaluation, unlearned.stopped_at_epoch
        del unlearned
        train_seconds = time.perf_counter() - t0
        if storage.remote and checkpoint.is_dir() and stored_checkpoint.endswith(f"/checkpoints/{trial_id}"):
            with clock.phase("save_checkpoint"):
                storage.upload_folder(checkpoint, sweep.name, "checkpoints", trial_id)
                for kept in checkpoint.parent.glob(f"{trial_id}{results.EPOCH_MARK}*"):
                    storage.upload_folder(kept, sweep.name, "checkpoints", kept.name)

        t1 = time.perf_counter()
        gpu = sweep.resources.gpus_per_worker > 0
        if evaluated is not None:  # every epoch was evaluated: the last evaluation is the final one
            del model
            evaluation = evaluated
        elif engine == "ray_data":
            from ..orchestration.eval_pipeline import evaluate_with_ray_data

            del model
            actor: dict[str, float] = {}
            with clock.phase("eval_startup"):
                stats = evaluate_with_ray_data(
                    stored_checkpoint,
                    ws,
                    num_actors=sweep.resources.workers if gpu else 1,
                    # In-process CPU trials lend their own CPU to the evaluation actor.
                    num_cpus=0 if not gpu else sweep.resources.cpus_per_worker,
                    num_gpus=1 if gpu else 0,
                    threads=threads,
                    timings=actor,
                )
            for name in ("load_checkpoint", "evaluate"):
                clock.add("eval_startup", -actor.get(name, 0.0))
                clock.add(name, actor.get(name, 0.0))
        else:
            with clock.phase("load_checkpoint"):  # ~0 s when the model is still in memory
                if model is None:  # unlearned on TorchTrainer workers: read their checkpoint
                    local = (
                        checkpoint
                        if checkpoint.is_dir()
                        else local_copy(stored_checkpoint, sweep.run.cache_dir)
                    )
                    model = load_prepared_model(local, run)
            with clock.phase("evaluate"):
                stats = ws.benchmark.score_items(model, ws, ws.benchmark.evaluation_items(ws))
            del model
        if evaluated is None:
            with clock.phase("metrics"):
                evaluation = ws.benchmark.aggregate(ws, stats, retrain_reference)
        metrics, examples = evaluation.metrics, evaluation.examples
        eval_seconds = time.perf_counter() - t1
    except TrainingDiverged as exc:
        row = trial_row(
            sweep,
            trial_id,
            run,
            status="failed",
            error=f"{DIVERGED}{exc}",
            started_at=started,
            finished_at=now(),
            checkpoint=None,
        )
        results.write_trial_results(
            root,
            trial_id,
            trials=[row],
            metrics=metric_rows(sweep.name, trial_id, {}, epochs) + clock.rows(sweep.name, trial_id),
            weights=None
            if recorder is None
            else [dict(w, sweep=sweep.name, trial_id=trial_id) for w in recorder.rows],
        )
        raise TrialFailed(f"trial {trial_id} diverged: {exc}") from None

    row = trial_row(
        sweep,
        trial_id,
        run,
        status="completed",
        error=None,
        started_at=started,
        finished_at=now(),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        checkpoint=stored_checkpoint,
        forget_quality=metrics.get("forget_quality"),
        model_utility=metrics.get("model_utility"),
        # a stopped trial's model is that of the epochs it ran (params_json keeps the planned ones)
        **({} if stopped_at_epoch is None else {"epochs": stopped_at_epoch}),
    )
    example_rows = [dict(e, sweep=sweep.name, trial_id=trial_id) for e in examples]
    results.write_trial_results(
        root,
        trial_id,
        trials=[row],
        metrics=metric_rows(
            sweep.name,
            trial_id,
            {
                **metrics,
                **({} if stopped_at_epoch is None else {"stopped_at_epoch": float(stopped_at_epoch)}),
            },
            epochs,
        )
        + clock.rows(sweep.name, trial_id),
        examples=example_rows,
        weights=None
        if recorder is None
        else [dict(w, sweep=sweep.name, trial_id=trial_id) for w in recorder.rows],
    )
    objective_names = [o.metric for o in sweep.search.objectives]
    points = [
        {"epoch": int(e["epoch"]), **{m: float(e[m]) for m in objective_names}}
        for e in epochs
        if all(m in e for m in objective_names)
    ]
    tune.report(
        {
            **metrics,
            "completed": 1.0,
            "method": run.method.name,
            "epoch": int(epochs[-1]["epoch"]) if epochs else 0,
            "stopped_early": float(stopped_at_epoch is not None),
            "epoch_points": points,
        }
    )
