"""The unlearning recipe (`unlearn_model`) and the single-run recipe (`run`): prepare Original and
Retrain (cached), unlearn, evaluate.

`python -m raysimnpo.run` calls `run`; the Ray trial calls the same pieces (`recipes.prepare.prepare`,
`unlearn_model`, `recipes.evaluate.evaluate`) and every TorchTrainer worker calls `unlearn_model` (and,
to prepare for trials on workers, `recipes.prepare.finetune_weights`), so a CPU run and a cluster run
share one path. The pieces live in their own modules, each importing only those below it:
`recipes.workspace` (data, tokenizer, encoded examples), `recipes.evaluate` (evaluation, per-epoch
evaluation), `recipes.prepare` (Original and Retrain, cached) and this one.

Everything that differs between benchmarks is asked of the run's `Benchmark` (`ws.benchmark`, from
`raysimnpo.benchmarks.registry`): which rows train Original / Retrain and feed the forget and retain
terms (`recipes.workspace.training_examples`), how a model is evaluated (`recipes.evaluate.evaluate`),
what of Retrain's evaluation the others are measured against (`recipes.prepare.retrain_reference`),
released models and cache-key parts. The loop, the caching and the unlearning are shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..benchmarks.base import Evaluation
from ..config.run import RunSettings
from ..errors import UserInputError
from ..methods import METHODS, MethodParams, apply_task_vector, needs_of
from ..training import sharding
from ..training.loop import EpochEnd, ForgetBatchHook, TrainingSummary, UnlearnInputs, frozen_copy, train
from ..training.scoring import score_sequences
from .evaluate import EpochEvaluator, evaluate
from .prepare import PreparedModel, prepare, retrain_reference
from .workspace import (
    Log,
    Workspace,
    load_prepared_model,
    quiet,
    reference_examples,
    training_examples,
    workspace,
)


@dataclass
class RunResult:
    original: PreparedModel
    retrain: PreparedModel | None
    unlearned: Evaluation
    training: TrainingSummary
    evaluation_seconds: float
    model: PreTrainedModel | None = None  # the unlearned model (python -m raysimnpo.run saves it)
    workspace: Workspace | None = None


def unlearn_inputs(
    ws: Workspace,
    params: MethodParams,
    reference: PreTrainedModel | None,
    reference_nll: tuple[Any, Any] | None = None,
) -> UnlearnInputs:
    """Forget/retain examples plus what the method needs: refusals for IDK, and the reference NLLs
    ℓ_ref (eq. 2) of the forget answers and refusals, computed once by the Original (or passed in
    as `reference_nll`, precomputed for a whole sweep: one value per forget answer and per refusal)."""
    forget, refusals = reference_examples(ws)
    inputs = UnlearnInputs(
        forget=forget, retain=training_examples(ws, "retain", ws.config.unlearn.max_length)
    )
    needs = needs_of(params)
    if "idk" in needs:
        inputs.idk = refusals
    if "reference_nll" in needs:
        if reference_nll is None:
            assert reference is not None
            batch = ws.config.evaluation.batch_size
            reference_nll = (
                score_sequences(reference, forget, batch, ws.pad_id)[0],
                score_sequences(reference, refusals, batch, ws.pad_id)[0] if refusals else [],
            )
        elif len(reference_nll[0]) != len(forget) or (refusals and len(reference_nll[1]) != len(refusals)):
            # (a raw-text benchmark has no refusals: its stored refusal column is not read)
            sizes = [len(v) for v in reference_nll]
            raise UserInputError(
                f"reference_nll: {sizes[0]} and {sizes[1]} values but the forget set has {len(forget)} "
                f"examples and {len(refusals)} refusals; allowed: one ℓ_ref per forget answer and per "
                "refusal, in order"
            )
        inputs.forget_ref_nll = torch.tensor(reference_nll[0], dtype=torch.float32)
        inputs.idk_ref_nll = torch.tensor(reference_nll[1] if refusals else [], dtype=torch.float32)
    return inputs


def check_batches(inputs: UnlearnInputs, params: MethodParams, batch_size: int, world_size: int) -> None:
    """Every rank must take a non-empty slice of every global batch (FSDP steps are collectives):
    the last, partial batch of the forget set and of the retain stream must hold 0 or at least
    `world_size` examples."""
    sets = {"forget": len(inputs.forget)}
    if METHODS[params.name].retain_weight(params) > 0:
        sets["retain"] = len(inputs.retain)
    mistake = batch_mistake(sets, batch_size, world_size)
    if mistake is not None:
        raise UserInputError(f"unlearn.batch_size: {mistake}")


def batch_mistake(sets: Mapping[str, int], batch_size: int, world_size: int) -> str | None:
    """Why `batch_size` cannot be split over `world_size` ranks for sets of these sizes, or None."""
    for which, n in sets.items():
        rest = n % batch_size
        if world_size > 1 and 0 < rest < world_size:
            return (
                f"the {which} set's {n} examples leave a last batch of {rest} for {world_size} workers; "
                f"allowed: a batch size that leaves 0 or at least {world_size} examples"
            )
    return None


def unlearn_model(
    ws: Workspace,
    original: Path | str | PreTrainedModel,
    method: MethodParams | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    *,
    reference_nll: tuple[Any, Any] | None = None,
    on_forget_batch: ForgetBatchHook | None = None,
    epoch_end: EpochEnd | None = None,
    resume_from: str | Path | None = None,
    after_epoch: Callable[[PreTrainedModel, int], dict[str, float]] | None = None,
    stop_after: Callable[[dict[str, float]], bool] | None = None,
) -> tuple[PreTrainedModel, TrainingSummary]:
    """The unlearning recipe: (workspace, Original weights, method, report) -> unlearned model.

    The single-run CLI, an in-process trial and every TorchTrainer worker call this one function.
    `original`: the Original's folder, or the model itself (unlearned in place). `method` defaults to
    the config's. In a torch.distributed group of several ranks (FSDP2 workers) each rank calls it:
    ℓ_ref and the method's frozen copy are taken from the whole Original, then both models are
    sharded and `training.train` walks the same global batches on every rank, so the result equals
    a single process's. The method's `after_training` step (Task Vector) runs at the end, shard by
    shard when sharded. `report` gets one row per epoch; `on_forget_batch`, `epoch_end`,
    `resume_from` and `stop_after` as in `training.train`. `after_epoch(model, epoch)` (e.g. an
    `EpochEvaluator`) sees the model the method would return after that epoch: for a method with an
    `after_training` step, that step is applied for the call and undone after it.
    """
    config = ws.config
    params = config.method if method is None else method
    rank, world_size = sharding.rank_and_world_size()
    model = original if isinstance(original, PreTrainedModel) else load_prepared_model(Path(original), config)
    inputs = unlearn_inputs(ws, params, model, reference_nll)
    check_batches(inputs, params, config.unlearn.batch_size, world_size)
    frozen = frozen_copy(model, params)
    if world_size > 1:
        sharding.shard_model(model)
        if frozen is not None:
            sharding.shard_model(frozen)
    after_training = METHODS[params.name].after_training
    original_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()} if after_training is not None else None
    )

    def output_after(epoch: int) -> dict[str, float]:
        assert after_epoch is not None
        if original_state is None:
            return after_epoch(model, epoch)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(apply_task_vector(original_state, trained, params))
        try:
            return after_epoch(model, epoch)
        finally:
            model.load_state_dict(trained)

    summary = train(
        model,
        config.unlearn,
        pad_id=ws.pad_id,
        seed=config.seed,
        unlearn=inputs,
        params=params,
        report=report,
        on_forget_batch=on_forget_batch,
        epoch_end=epoch_end,
        resume_from=resume_from,
        rank=rank,
        world_size=world_size,
        frozen=frozen,
        after_epoch=None if after_epoch is None else output_after,
        stop_after=stop_after,
    )
    if original_state is not None:
        model.load_state_dict(apply_task_vector(original_state, model.state_dict(), params))
    return model, summary


def run(config: RunSettings, log: Log = quiet) -> RunResult:
    ws = workspace(config)
    prepared = prepare(ws, log)
    forget = ws.benchmark.forget_description(ws.data)
    log(f"[unlearn] {config.method.name}: {config.unlearn.epochs} epochs over {forget}")

    reference = retrain_reference(ws, prepared.retrain)
    # `evaluation.every_epoch`: each epoch's metrics join its training row, and the last epoch's
    # evaluation is the run's
    evaluator = EpochEvaluator(ws, reference, []) if config.evaluation.every_epoch else None
    headline = ws.benchmark.headline_metrics

    def show(row: dict[str, Any]) -> None:
        scores = "".join(f" {m} {row[m]:.3g}" for m in headline if m in row)
        log(
            f"[unlearn] epoch {row['epoch']}/{config.unlearn.epochs} forget {row['forget_loss']:.4f} "
            f"retain {row['retain_loss']:.4f}{scores}"
        )

    model, summary = unlearn_model(ws, prepared.original.path, report=show, after_epoch=evaluator)
    if evaluator is not None and evaluator.last is not None:
        evaluation, seconds = evaluator.last, evaluator.seconds
    else:
        started = time.perf_counter()
        evaluation = evaluate(ws, model, reference)
        seconds = time.perf_counter() - started
    return RunResult(prepared.original, prepared.retrain, evaluation, summary, seconds, model, ws)
