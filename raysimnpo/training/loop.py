"""The one training loop: fine-tuning (Original, Retrain, relearning) and unlearning with any method.

Read it top to bottom: `train` builds AdamW and the paper's schedule, walks the epochs, and per
step either takes the token-mean NLL of a batch (fine-tuning) or asks `step_terms` for what the
method needs and adds the method's forget and retain terms with λ (eq. 1).

An unlearning epoch is one pass over the forget set; each forget batch is paired with the next
batch of a shuffled, cycling retain stream, so λ weighs equal-sized batches as in the paper.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from ..config.base import TrainSettings
from ..data.collate import pad_right
from ..data.formatting import EncodedExample
from ..maths import objectives
from ..maths.logprobs import sequence_nll
from ..methods import (
    METHODS,
    MethodParams,
    StepTerms,
    all_parameters,
    gradient_weights,
    needs_of,
)
from ..methods import rmu_layer as rmu_layer  # RMU's layer k (re-exported for the step benchmark)
from . import sharding
from .precision import keeps_fp32_master_weights
from .state import load_training_state

Report = Callable[[dict[str, Any]], None]
# epoch_end(rows of the epochs done so far, optimizer, scheduler), e.g. to save a training state
EpochEnd = Callable[
    [list[dict[str, float]], torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler], None
]
# on_forget_batch(epoch from 1, indices into the forget set, the StepTerms of that global batch)
ForgetBatchHook = Callable[[int, list[int], StepTerms], None]
# on_step(optimizer steps done, that step's loss), after the update
StepHook = Callable[[int, float], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or the forget term's magnitude passed
    `TrainSettings.max_forget_loss`; the run stops instead of writing a broken model."""


@dataclass
class UnlearnInputs:
    """What unlearning needs besides the model: the forget and retain examples and, per method,
    the cached reference NLLs (ℓ_ref of eq. 2, computed once by the Original) and refusals."""

    forget: Sequence[EncodedExample]
    retain: Sequence[EncodedExample]
    forget_ref_nll: Tensor | None = None
    idk: Sequence[EncodedExample] | None = None  # one refusal per forget example, same order
    idk_ref_nll: Tensor | None = None


class GradientWeightLog:
    """An `on_forget_batch` hook: one row per forget example and epoch with its closed-form gradient
    weight (NPO's w, eq. 3; SimNPO's w', eq. 5: `methods.gradient_weights`) and its |y|."""

    def __init__(self, params: MethodParams) -> None:
        self.params = params
        self.rows: list[dict[str, Any]] = []

    def __call__(self, epoch: int, index: list[int], terms: StepTerms) -> None:
        weights = gradient_weights(self.params, terms)
        if weights is None:
            return
        for i, w, n in zip(index, weights.tolist(), terms.forget_tokens.tolist(), strict=True):
            self.rows.append({"epoch": epoch, "index": i, "weight": w, "answer_tokens": int(n)})


@dataclass
class TrainingSummary:
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    resumed_from_epoch: int = 0  # epochs restored from a saved training state, not trained here
    after_epoch_seconds: float = 0.0  # spent in `after_epoch` (e.g. per-epoch evaluation), within `seconds`
    stopped_at_epoch: int | None = None  # the epoch after which `stop_after` ended the run early


def schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first epoch, then linear decay to zero (appendix C.1)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(1, total_steps - warmup_steps)
        return max(0.0, (total_steps - step) / remaining)

    return factor


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, min_size: int = 1
) -> list[list[int]]:
    """A random permutation cut into batches. A last batch smaller than `min_size` (the data-parallel
    world size, so that no rank gets an empty slice) is left out of this pass."""
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= min_size]


def steps_per_pass(n: int, batch_size: int, min_size: int = 1) -> int:
    """len(shuffled_batches(n, batch_size, g, min_size)): ceil(n / batch_size) for one process."""
    return sum(1 for start in range(0, n, batch_size) if min(batch_size, n - start) >= min_size)


def cycling_batches(
    n: int, batch_size: int, generator: torch.Generator, min_size: int = 1
) -> Iterator[list[int]]:
    if steps_per_pass(n, batch_size, min_size) == 0:
        raise ValueError(f"{n} examples in batches of {batch_size} give no batch of at least {min_size}")
    while True:
        yield from shuffled_batches(n, batch_size, generator, min_size)


def trainable_parameters(model: PreTrainedModel, params: MethodParams | None) -> list[torch.nn.Parameter]:
    """The parameters AdamW updates: all of them for fine-tuning, else the method's `trainable` hook
    (all but RMU, which trains the MLPs of layers k-n+1..k)."""
    if params is None:
        return all_parameters(model, None)  # type: ignore[arg-type]
    return METHODS[params.name].trainable(model, params)


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _width(examples: Sequence[EncodedExample], index: list[int]) -> int:
    """The padded width of a batch: its longest sequence."""
    return max(len(examples[i].input_ids) for i in index)


def step_terms(
    model: PreTrainedModel,
    params: MethodParams,
    inputs: UnlearnInputs,
    forget_index: list[int],
    retain_index: list[int],
    pad_id: int,
    frozen: PreTrainedModel | None,
    forget_target: Tensor | None,
    *,
    global_forget: list[int] | None = None,
    global_retain: list[int] | None = None,
) -> StepTerms:
    """Run the model on one forget batch and one retain batch and collect what the loss needs, one
    value per sequence (token-level terms summed per sequence, `objectives.sequence_kl` and
    `objectives.sequence_squared_error`). `frozen`: the Original, for the methods that need it;
    `forget_target`: the method's `forget_target` vector (RMU's c·u). `global_forget` /
    `global_retain`: the whole global batches this rank's indices are a slice of; every rank pads
    its slice to the global batch's longest sequence, so each sequence is computed in the same shape
    as in a single process."""
    device = next(model.parameters()).device
    needs = needs_of(params)
    method = METHODS[params.name]
    hidden_layer = method.hidden_layer(model, params) + 1 if method.hidden_layer is not None else None

    forget_width = _width(inputs.forget, global_forget or forget_index)
    forget = _to_device(
        pad_right([inputs.forget[i] for i in forget_index], pad_id, pad_to_multiple_of=forget_width), device
    )
    out = model(
        input_ids=forget["input_ids"],
        attention_mask=forget["attention_mask"],
        output_hidden_states=hidden_layer is not None,
    )
    forget_nll, forget_tokens = sequence_nll(out.logits.float(), forget["labels"])
    terms = StepTerms(forget_nll=forget_nll, forget_tokens=forget_tokens)
    if hidden_layer is not None:
        assert forget_target is not None, f"{params.name} needs its forget_target vector"
        hidden = out.hidden_states[hidden_layer]
        terms.forget_hidden_se, terms.forget_hidden_positions = objectives.sequence_squared_error(
            hidden, forget_target.to(hidden.device).expand_as(hidden), forget["labels"] != -100
        )
    del out

    if "reference_nll" in needs:
        assert inputs.forget_ref_nll is not None, "reference NLLs must be computed before NPO/IdkDPO"
        terms.forget_ref_nll = inputs.forget_ref_nll[forget_index].to(device)
    if "idk" in needs:
        assert inputs.idk is not None
        idk_width = _width(inputs.idk, global_forget or forget_index)
        idk = _to_device(
            pad_right([inputs.idk[i] for i in forget_index], pad_id, pad_to_multiple_of=idk_width), device
        )
        idk_logits = model(input_ids=idk["input_ids"], attention_mask=idk["attention_mask"]).logits
        terms.idk_nll, terms.idk_tokens = sequence_nll(idk_logits.float(), idk["labels"])
        if inputs.idk_ref_nll is not None:
            terms.idk_ref_nll = inputs.idk_ref_nll[forget_index].to(device)

    if "retain_weight" in type(params).model_fields:  # a method with a retain term needs it even at λ = 0
        retain_width = _width(inputs.retain, global_retain or retain_index)
        retain = _to_device(
            pad_right([inputs.retain[i] for i in retain_index], pad_id, pad_to_multiple_of=retain_width),
            device,
        )
        out = model(
            input_ids=retain["input_ids"],
            attention_mask=retain["attention_mask"],
            output_hidden_states=hidden_layer is not None,
        )
        terms.retain_nll, terms.retain_tokens = sequence_nll(out.logits.float(), retain["labels"])
        if frozen is not None:
            with torch.no_grad():
                ref = frozen(
                    input_ids=retain["input_ids"],
                    attention_mask=retain["attention_mask"],
                    output_hidden_states=hidden_layer is not None,
                )
            if hidden_layer is not None:
                terms.retain_hidden_se, terms.retain_hidden_positions = objectives.sequence_squared_error(
                    out.hidden_states[hidden_layer], ref.hidden_states[hidden_layer], retain["labels"] != -100
                )
            else:
                terms.retain_kl = objectives.sequence_kl(out.logits, ref.logits, retain["labels"])
    return terms


def frozen_copy(model: PreTrainedModel, params: MethodParams | None) -> PreTrainedModel | None:
    """A frozen copy of the starting model for the methods that need one (RMU, GradDiff-KL), else
    None. Take it before the model is sharded (FSDP2 modules cannot be deep-copied)."""
    if params is None or "frozen_model" not in needs_of(params):
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


@keeps_fp32_master_weights  # bf16-loaded models: fp32 master weights, bf16 compute (precision.py)
def train(
    model: PreTrainedModel,
    settings: TrainSettings,
    *,
    pad_id: int,
    seed: int,
    examples: Sequence[EncodedExample] | None = None,
    unlearn: UnlearnInputs | None = None,
    params: MethodParams | None = None,
    report: Report | None = None,
    after_epoch: Callable[[int], dict[str, float]] | None = None,
    on_forget_batch: ForgetBatchHook | None = None,
    epoch_end: EpochEnd | None = None,
    resume_from: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    frozen: PreTrainedModel | None = None,
    max_steps: int | None = None,
    on_step: StepHook | None = None,
    lr_schedule: Literal["linear", "constant"] = "linear",
    stop_after: Callable[[dict[str, float]], bool] | None = None,
) -> TrainingSummary:
    """Fine-tune on `examples` (params None), or unlearn `unlearn.forget` with `params`.

    `report` receives one dict per epoch (losses, learning rate, and whatever `after_epoch`
    returns, e.g. evaluation metrics). Raises TrainingDiverged on a non-finite loss, or on a forget
    term larger in magnitude than `settings.max_forget_loss` (when set). `on_forget_batch(epoch,
    index, terms)` sees every unlearning step's forget indices (this rank's) and their per-sequence
    terms of the whole global batch (gathered over the ranks; `index` in gathered order) before the
    update, e.g. `GradientWeightLog`.

    Resuming: `epoch_end` may save the state with `training_state.save_training_state`; a later
    call with `resume_from` set to that folder restores it and trains the remaining epochs on the
    same batches, so the result equals an uninterrupted run's.

    Data parallel (FSDP): every rank draws the same global batches from the shared seed and keeps
    its slice `index[rank::world_size]`, so the averaged gradients equal the single-process ones.
    A method that needs a frozen copy of the starting model (`frozen_copy`) gets it from `frozen`
    (required when `model` is already sharded), else the loop takes it here.

    `max_steps` stops after that many optimizer steps (the last epoch may be partial; the schedule
    spans the steps taken); `on_step(step, loss)` runs after every step (e.g. the Markov study's
    evaluation every few iterations); `lr_schedule` "constant" keeps the learning rate fixed
    (the Markov study's AdamW) instead of the paper's warm-up and linear decay.

    `stop_after(row)` is asked after every epoch (its row holds `after_epoch`'s values, e.g. the
    epoch's evaluation); True ends the run there (early stopping) unless it was the last epoch.
    Under several ranks, rank 0's answer is taken by all (`sharding.rank0_decides`).
    """
    if (params is None) != (unlearn is None) or (unlearn is None and examples is None):
        raise ValueError("pass `examples` to fine-tune, or `unlearn` and `params` to unlearn")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    primary = examples if unlearn is None else unlearn.forget
    assert primary is not None
    steps_per_epoch = steps_per_pass(len(primary), settings.batch_size, world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(primary)} examples give no batch of at least {world_size} (one per rank)")
    total_steps = steps_per_epoch * settings.epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    trainable = trainable_parameters(model, params)
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    factor = schedule(total_steps, warmup) if lr_schedule == "linear" else (lambda _: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    target = None
    retain_stream: Iterator[list[int]] | None = None
    if unlearn is not None and params is not None:
        if frozen is None and "frozen_model" in needs_of(params):
            if isinstance(model, FSDPModule):
                raise ValueError(f"{params.name}: pass `frozen` (a copy taken before sharding)")
            frozen = frozen_copy(model, params)
        method = METHODS[params.name]
        if method.forget_target is not None:  # e.g. RMU's c·u, drawn from the seed so runs repeat
            target = method.forget_target(model, params, generator).to(device)
        retain_stream = cycling_batches(len(unlearn.retain), settings.batch_size, generator, world_size)

    summary = TrainingSummary()
    if resume_from is not None:  # after the frozen copy above, which must hold the starting weights
        summary.epochs = load_training_state(resume_from, model, optimizer, scheduler)
        summary.resumed_from_epoch = len(summary.epochs)
        for _ in summary.epochs:  # replay the done epochs' batch draws, so the next batches match
            for _ in shuffled_batches(len(primary), settings.batch_size, generator, world_size):
                if retain_stream is not None:
                    next(retain_stream)
    started = time.perf_counter()
    model.train()
    step = summary.resumed_from_epoch * steps_per_epoch
    for epoch in range(summary.resumed_from_epoch, settings.epochs):
        if step >= total_steps:
            break
        sums = {"loss": 0.0, "forget_loss": 0.0, "retain_loss": 0.0}
        steps_done = 0
        for global_index in shuffled_batches(len(primary), settings.batch_size, generator, world_size):
            if step >= total_steps:
                break
            index = global_index[rank::world_size]
            if unlearn is None or params is None:
                width = _width(primary, global_index)  # the global batch's width on every rank
                batch = _to_device(
                    pad_right([primary[i] for i in index], pad_id, pad_to_multiple_of=width), device
                )
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                nll, n = sequence_nll(logits.float(), batch["labels"])
                # Every rank evaluates the loss on the whole global batch (sharding.gather_rows), so
                # FSDP's averaged gradient is the single-process one.
                nll, n = sharding.gather_rows(nll), sharding.gather_rows(n)
                loss = objectives.retain_nll_loss(nll, n)
                forget_term, retain_term = None, loss
                summary.tokens += int(batch["attention_mask"].sum())
            else:
                assert retain_stream is not None
                global_retain = next(retain_stream)
                retain_index = global_retain[rank::world_size]
                terms = step_terms(
                    model,
                    params,
                    unlearn,
                    index,
                    retain_index,
                    pad_id,
                    frozen,
                    target,
                    global_forget=global_index,
                    global_retain=global_retain,
                )
                # the method's per-sequence terms of the whole global batch
                terms = sharding.gather_step_terms(terms, METHODS[params.name].gathered)
                if on_forget_batch is not None:  # gathered rows come rank by rank
                    order = [i for r in range(world_size) for i in global_index[r::world_size]]
                    on_forget_batch(epoch + 1, order, terms)
                forget_term, retain_term = METHODS[params.name].loss(terms, params)
                loss = forget_term
                if retain_term is not None:
                    loss = loss + METHODS[params.name].retain_weight(params) * retain_term
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}")
            limit = settings.max_forget_loss
            if limit is not None and forget_term is not None and abs(forget_term.item()) > limit:
                raise TrainingDiverged(
                    f"forget loss {forget_term.item():.4g} at epoch {epoch + 1} exceeds "
                    f"max_forget_loss={limit:g}"
                )
            loss.backward()
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums["loss"] += loss.item()
            sums["forget_loss"] += forget_term.item() if forget_term is not None else 0.0
            sums["retain_loss"] += retain_term.item() if retain_term is not None else 0.0
            step, steps_done = step + 1, steps_done + 1
            if on_step is not None:
                on_step(step, loss.item())
                model.train()
        row = {k: v / steps_done for k, v in sums.items()}
        row.update(epoch=epoch + 1, learning_rate=scheduler.get_last_lr()[0])
        if after_epoch is not None:
            evaluating = time.perf_counter()
            row.update(after_epoch(epoch + 1))
            summary.after_epoch_seconds += time.perf_counter() - evaluating
            model.train()
        summary.epochs.append(row)
        if report is not None:
            report(row)
        if epoch_end is not None:
            epoch_end(list(summary.epochs), optimizer, scheduler)
        # Asked after the last epoch too, where its answer ends nothing: an early-stopping rule sees
        # every epoch's point, as a resumed sweep's rule reads them all back from the results.
        stop = stop_after is not None and sharding.rank0_decides(rank == 0 and stop_after(row))
        if stop and epoch + 1 < settings.epochs:
            summary.stopped_at_epoch = epoch + 1
            break
    summary.seconds = time.perf_counter() - started
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return summary
