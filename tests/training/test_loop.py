"""raysimnpo.training.loop: the schedule by hand, determinism, what fine-tuning and each kind of unlearning
do to the NLLs (eq. 1), divergence, per-epoch reports, RMU's trainable subset and Task Vector's
θ_o − α(θ_ft − θ_o), on a tiny random Llama and hand-made encoded examples."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from raysimnpo import methods
from raysimnpo.config.base import TrainSettings
from raysimnpo.data.formatting import EncodedExample
from raysimnpo.maths.logprobs import IGNORE_INDEX, sequence_nll
from raysimnpo.methods import (
    GAParams,
    GradDiffParams,
    MethodParams,
    RMUParams,
    SimNPOParams,
    StepTerms,
    TaskVectorParams,
)
from raysimnpo.training import loop as training
from raysimnpo.training.loop import TrainingDiverged, UnlearnInputs, schedule, train

State = dict[str, torch.Tensor]
TinyLlama = Callable[..., LlamaForCausalLM]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # as the `tiny_llama` fixture configures them

pytestmark = pytest.mark.usefixtures("single_thread")


def qa(prompt: Sequence[int], answer: Sequence[int]) -> EncodedExample:
    """<s> prompt answer </s>, with the prompt (and <s>) masked: |y| = len(answer) + 1."""
    return EncodedExample(
        input_ids=[BOS_ID, *prompt, *answer, EOS_ID],
        labels=[IGNORE_INDEX] * (1 + len(prompt)) + [*answer, EOS_ID],
    )


# Forget answers use tokens 10-19, retain answers 20-35; prompts share tokens 3-9.
FORGET = [qa([3, 4], [10, 11, 12]), qa([3, 5], [13, 14]), qa([3, 6], [15, 16, 17, 18]), qa([3, 7], [19, 10])]
RETAIN = [
    qa([4, 3], [20, 21, 22]),
    qa([5, 3], [23, 24]),
    qa([6, 3], [25, 26, 27]),
    qa([7, 3], [28, 29]),
    qa([8, 3], [30, 31, 32, 33]),
    qa([9, 3], [34, 35]),
]


def settings(**changes: Any) -> TrainSettings:
    base: dict[str, Any] = {"epochs": 3, "learning_rate": 1e-2, "batch_size": 2, "weight_decay": 0.0}
    return TrainSettings(**{**base, **changes})


def state(model: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def nll_per_token(model: torch.nn.Module, examples: Sequence[EncodedExample]) -> float:
    """Σ ℓ_i / Σ |y_i|, one example at a time (no padding)."""
    total = tokens = 0.0
    for e in examples:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits
        nll, n = sequence_nll(logits.float(), torch.tensor([e.labels]))
        total, tokens = total + nll.item(), tokens + n.item()
    return total / tokens


@pytest.fixture(scope="module")
def finetuned(single_thread: None, tiny_llama: TinyLlama) -> State:
    """A tiny Llama fine-tuned on forget + retain: the 'Original' the unlearning tests start from."""
    model = tiny_llama(seed=0)
    train(model, settings(epochs=30, learning_rate=2e-2), pad_id=PAD_ID, seed=0, examples=FORGET + RETAIN)
    return state(model)


def original(tiny_llama: TinyLlama, finetuned: State) -> LlamaForCausalLM:
    model = tiny_llama(seed=0)
    model.load_state_dict(finetuned)
    return model


def unlearn(
    model: LlamaForCausalLM, params: MethodParams, seed: int = 0, **changes: Any
) -> training.TrainingSummary:
    return train(
        model,
        settings(**changes),
        pad_id=PAD_ID,
        seed=seed,
        unlearn=UnlearnInputs(forget=FORGET, retain=RETAIN),
        params=params,
    )


# ------------------------------------------------------------------------------------ schedule


def test_schedule_warmup_then_linear_decay() -> None:
    # total 10, warm-up 2: (s+1)/2 for s < 2, then (10 − s)/(10 − 2).
    factor = schedule(10, 2)
    expected = [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    assert [factor(s) for s in range(11)] == pytest.approx(expected, abs=1e-12)
    # No warm-up: (4 − s)/4.
    assert [schedule(4, 0)(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0], abs=1e-12)
    # Warm-up 3 of 5 steps: 1/3, 2/3, 3/3, then (5 − 3)/2 = 1.0, (5 − 4)/2 = 0.5, 0.
    assert [schedule(5, 3)(s) for s in range(6)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 1.0, 0.5, 0.0], abs=1e-12
    )


def test_steps_per_pass_matches_shuffled_batches() -> None:
    g = torch.Generator().manual_seed(0)
    for n, batch, min_size in [(6, 2, 1), (7, 3, 1), (7, 3, 2), (5, 2, 2), (1, 4, 2)]:
        batches = training.shuffled_batches(n, batch, g, min_size)
        assert len(batches) == training.steps_per_pass(n, batch, min_size)
        assert all(len(b) >= min_size for b in batches)
    # 5 examples in batches of 2 for 2 ranks: {2, 2} kept, the last single example dropped.
    assert training.steps_per_pass(5, 2, 2) == 2
    assert sorted(i for b in training.shuffled_batches(6, 4, g) for i in b) == list(range(6))


# --------------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_different_seed_different(tiny_llama: TinyLlama) -> None:
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        model = tiny_llama(seed=0)
        train(model, settings(), pad_id=PAD_ID, seed=seed, examples=RETAIN)
        runs[name] = state(model)
    assert same_weights(runs["a"], runs["b"])
    assert not same_weights(runs["a"], runs["c"])  # another seed shuffles the batches differently


def test_world_size_one_equals_default(tiny_llama: TinyLlama, finetuned: State) -> None:
    a, b = tiny_llama(seed=0), tiny_llama(seed=0)
    train(a, settings(), pad_id=PAD_ID, seed=3, examples=RETAIN)
    train(b, settings(), pad_id=PAD_ID, seed=3, examples=RETAIN, rank=0, world_size=1)
    assert same_weights(state(a), state(b))
    u, v = original(tiny_llama, finetuned), original(tiny_llama, finetuned)
    unlearn(u, SimNPOParams(), seed=3)
    train(
        v,
        settings(),
        pad_id=PAD_ID,
        seed=3,
        unlearn=UnlearnInputs(forget=FORGET, retain=RETAIN),
        params=SimNPOParams(),
        rank=0,
        world_size=1,
    )
    assert same_weights(state(u), state(v))


# ------------------------------------------------------------------------ what training does


def test_finetuning_lowers_training_nll(tiny_llama: TinyLlama) -> None:
    model = tiny_llama(seed=0)
    before = nll_per_token(model, RETAIN)
    assert before == pytest.approx(3.91, abs=0.1)  # random init: close to ln 50 = 3.912
    summary = train(model, settings(epochs=10), pad_id=PAD_ID, seed=0, examples=RETAIN)
    after = nll_per_token(model, RETAIN)
    assert after < before - 1.0
    assert not model.training and all(p.requires_grad for p in model.parameters())
    # The epoch loss is the token-mean NLL over the epoch's batches: it falls too.
    assert summary.epochs[-1]["loss"] < summary.epochs[0]["loss"]
    assert summary.tokens == 10 * sum(len(e.input_ids) for e in RETAIN)


def test_simnpo_raises_forget_nll(tiny_llama: TinyLlama, finetuned: State) -> None:
    model = original(tiny_llama, finetuned)
    before = nll_per_token(model, FORGET)
    assert before < 1.0  # the Original has learnt the forget answers
    summary = unlearn(model, SimNPOParams(beta=2.5, retain_weight=0.1), epochs=5)
    after = nll_per_token(model, FORGET)
    assert after > before + 1.0  # ~0.007 -> ~2.4 nats per token
    # The reported forget loss is eq. 4's: −(2/β) log σ(β ℓ/|y|) falls as ℓ/|y| grows.
    assert summary.epochs[-1]["forget_loss"] < summary.epochs[0]["forget_loss"]


def test_grad_diff_keeps_retain_nll_closer_than_ga(tiny_llama: TinyLlama, finetuned: State) -> None:
    base = original(tiny_llama, finetuned)
    retain_before, forget_before = nll_per_token(base, RETAIN), nll_per_token(base, FORGET)
    changes = {}
    for params in (GAParams(), GradDiffParams(retain_weight=1.0)):
        model = original(tiny_llama, finetuned)
        unlearn(model, params, epochs=3)
        changes[params.name] = (nll_per_token(model, FORGET) - forget_before, nll_per_token(model, RETAIN))
    # Both forget (forget NLL up by ~0.85-0.95 nats/token); GA drags the retain NLL up with it (~0.18),
    # GradDiff's λ·NLL term holds it (~0.03).
    assert changes["ga"][0] > 0.5 and changes["grad_diff"][0] > 0.5
    ga_drift = abs(changes["ga"][1] - retain_before)
    grad_diff_drift = abs(changes["grad_diff"][1] - retain_before)
    assert ga_drift > 0.1
    assert grad_diff_drift < 0.3 * ga_drift


def test_grad_diff_with_zero_lambda_is_ga(tiny_llama: TinyLlama, finetuned: State) -> None:
    """λ = 0 is allowed (retain_weight >= 0): GradDiff then takes exactly GA's steps."""
    ga, grad_diff = original(tiny_llama, finetuned), original(tiny_llama, finetuned)
    unlearn(ga, GAParams(), epochs=2)
    summary = unlearn(grad_diff, GradDiffParams(retain_weight=0.0), epochs=2)
    assert same_weights(state(ga), state(grad_diff))
    assert summary.epochs[0]["loss"] == pytest.approx(summary.epochs[0]["forget_loss"])


# --------------------------------------------------------------------------- failure, reports


def _nan_loss(t: StepTerms, p: MethodParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    return t.forget_nll.sum() * float("nan"), None


@pytest.mark.parametrize("mode", ["finetune", "unlearn"])
def test_nan_loss_raises_training_diverged(
    mode: str, tiny_llama: TinyLlama, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama(seed=0)
    before = state(model)
    if mode == "finetune":
        monkeypatch.setattr(
            training.objectives, "retain_nll_loss", lambda nll, n: (nll / n).sum() * float("inf")
        )
        with pytest.raises(TrainingDiverged, match=r"loss became inf at epoch 1"):
            train(model, settings(), pad_id=PAD_ID, seed=0, examples=RETAIN)
    else:
        monkeypatch.setitem(
            training.METHODS, "ga", dataclasses.replace(methods.METHODS["ga"], loss=_nan_loss)
        )
        with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1"):
            unlearn(model, GAParams())
    assert same_weights(state(model), before)  # no step was taken with the broken loss


def test_forget_loss_guard_stops_ga(tiny_llama: TinyLlama, finetuned: State) -> None:
    """GA's forget term is −(token-mean NLL) < 0: the guard compares its magnitude, before the step."""
    model = original(tiny_llama, finetuned)
    before = state(model)
    first = nll_per_token(model, FORGET)  # one epoch's batches cover FORGET; every batch's NLL is > 1e-3
    assert first > 1e-3
    with pytest.raises(TrainingDiverged, match=r"forget loss -\d.* at epoch 1 exceeds max_forget_loss=0.001"):
        unlearn(model, GAParams(), max_forget_loss=1e-3)
    assert same_weights(state(model), before)
    summary = unlearn(original(tiny_llama, finetuned), GAParams(), epochs=1, max_forget_loss=1e6)
    assert len(summary.epochs) == 1  # a loose guard lets the run finish


def test_report_once_per_epoch(tiny_llama: TinyLlama, finetuned: State) -> None:
    rows: list[dict[str, Any]] = []
    model = original(tiny_llama, finetuned)
    # 4 forget examples in batches of 2: 2 steps an epoch, 4 in all; warm-up 0.5 epoch = 1 step, so
    # the learning rate after epoch 1 (step 2) is 0.01 · (4 − 2)/(4 − 1) = 0.00667, after epoch 2 zero.
    summary = train(
        model,
        settings(epochs=2, warmup_epochs=0.5),
        pad_id=PAD_ID,
        seed=0,
        unlearn=UnlearnInputs(forget=FORGET, retain=RETAIN),
        params=GradDiffParams(retain_weight=0.5),
        report=rows.append,
        after_epoch=lambda epoch: {"probe": 10.0 * epoch},
    )
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "loss", "forget_loss", "retain_loss", "learning_rate", "probe"} <= r.keys()
        # eq. 1: L = L_forget + λ L_retain, averaged over the epoch's steps.
        assert r["loss"] == pytest.approx(r["forget_loss"] + 0.5 * r["retain_loss"], rel=1e-5)
        assert r["retain_loss"] > 0 and r["forget_loss"] < 0  # GA's term is the negated NLL
    assert [r["learning_rate"] for r in rows] == pytest.approx([0.01 * 2 / 3, 0.0], abs=1e-12)
    assert [r["probe"] for r in rows] == [10.0, 20.0]
    assert summary.epochs == rows


@pytest.mark.parametrize(("stop_at", "ran"), [(2, 2), (3, 3), (None, 3)])
def test_stop_after_is_asked_every_epoch_and_ends_the_run_before_the_last(
    tiny_llama: TinyLlama, finetuned: State, stop_at: int | None, ran: int
) -> None:
    """Early stopping: a True after epoch 2 of 3 ends the run there; after the last epoch it is
    asked too (an early-stopping rule records that epoch's point) and changes nothing."""
    asked: list[int] = []

    def stop_after(row: dict[str, float]) -> bool:
        asked.append(int(row["epoch"]))
        return int(row["epoch"]) == stop_at

    summary = train(
        original(tiny_llama, finetuned),
        settings(epochs=3),
        pad_id=PAD_ID,
        seed=0,
        unlearn=UnlearnInputs(forget=FORGET, retain=RETAIN),
        params=GradDiffParams(retain_weight=0.5),
        stop_after=stop_after,
    )
    assert asked == list(range(1, ran + 1)) and len(summary.epochs) == ran
    assert summary.stopped_at_epoch == (2 if stop_at == 2 else None)


# ------------------------------------------------------------------------- RMU, Task Vector


def test_rmu_trains_only_the_chosen_mlp(tiny_llama: TinyLlama) -> None:
    model = tiny_llama(seed=0, num_hidden_layers=2)
    before = state(model)
    unlearn(model, RMUParams(layer=0, trainable_layers=1, steering_coeff=6.5, retain_weight=1.0), epochs=2)
    after = state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    mlp0 = {k for k in before if k.startswith("model.layers.0.mlp.")}
    assert mlp0 == {f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    assert changed == mlp0
    assert all(p.requires_grad for p in model.parameters())  # the loop hands the model back whole


def test_rmu_layer_out_of_range(tiny_llama: TinyLlama) -> None:
    with pytest.raises(ValueError, match=r"method.layer: 3 but the model has 1 decoder layers"):
        unlearn(tiny_llama(seed=0), RMUParams(layer=3))


def test_task_vector_negates_the_forget_finetune(tiny_llama: TinyLlama, finetuned: State) -> None:
    model = original(tiny_llama, finetuned)
    theta_o = state(model)
    params = TaskVectorParams(alpha=0.5)
    before = nll_per_token(model, FORGET)
    unlearn(model, params, epochs=2, learning_rate=1e-3)
    theta_ft = state(model)
    assert nll_per_token(model, FORGET) < before  # step 1 fine-tunes *towards* the forget set
    result = methods.apply_task_vector(theta_o, theta_ft, params)
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(theta_ft[key], theta_o[key])
    expected = theta_o[key] - 0.5 * (theta_ft[key] - theta_o[key])
    torch.testing.assert_close(result[key], expected, rtol=0, atol=1e-7)
    # Element by hand: θ_o = a, θ_ft = b gives 1.5 a − 0.5 b.
    a, b = theta_o[key][0, 0].item(), theta_ft[key][0, 0].item()
    assert result[key][0, 0].item() == pytest.approx(1.5 * a - 0.5 * b, abs=1e-7)
    # Other methods keep the trained weights as they are.
    kept = methods.apply_task_vector(theta_o, theta_ft, GAParams())
    assert kept[key] is theta_ft[key]


def test_on_forget_batch_sees_every_forget_example_once_per_epoch(
    tiny_llama: TinyLlama, finetuned: State
) -> None:
    """The hook gets (epoch, forget indices, terms) before each step; at the first step θ = θ_ref, so
    NPO's w (eq. 3) is 1 and SimNPO's w' (eq. 5) is 2σ(−βℓ/|y|)/|y| of the Original's ℓ."""
    model = original(tiny_llama, finetuned)
    with torch.no_grad():
        ref = [
            sequence_nll(model(input_ids=torch.tensor([e.input_ids])).logits, torch.tensor([e.labels]))
            for e in FORGET
        ]
    ref_nll = torch.cat([r[0] for r in ref])
    seen: dict[str, list[tuple[int, list[int], list[float], list[float]]]] = {"npo": [], "simnpo": []}
    for params in (methods.NPOParams(beta=0.5), SimNPOParams(beta=2.0)):

        def hook(epoch: int, index: list[int], terms: StepTerms, params: MethodParams = params) -> None:
            w = methods.gradient_weights(params, terms)
            assert w is not None
            seen[params.name].append((epoch, index, w.tolist(), terms.forget_tokens.tolist()))

        train(
            original(tiny_llama, finetuned),
            settings(epochs=2),
            pad_id=PAD_ID,
            seed=0,
            unlearn=UnlearnInputs(forget=FORGET, retain=RETAIN, forget_ref_nll=ref_nll),
            params=params,
            on_forget_batch=hook,
        )
    for calls in seen.values():
        assert [c[0] for c in calls] == [1, 1, 2, 2]  # 4 forget examples in batches of 2, two epochs
        for epoch in (1, 2):
            assert sorted(i for c in calls if c[0] == epoch for i in c[1]) == [0, 1, 2, 3]
        for _, index, _, tokens in calls:
            assert tokens == [len(FORGET[i].input_ids) - 3 for i in index]  # |y| = answer + EOS
    _, index, npo_w, _ = seen["npo"][0]
    assert npo_w == pytest.approx([1.0] * len(index), abs=1e-4)
    _, index, simnpo_w, tokens = seen["simnpo"][0]
    expected = [
        2 * torch.sigmoid(-2.0 * ref_nll[i] / n).item() / n for i, n in zip(index, tokens, strict=True)
    ]
    assert simnpo_w == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------- resuming


class StopAfter(Exception):
    pass


@pytest.mark.parametrize(
    "params",
    [None, SimNPOParams(beta=2.5, retain_weight=1.0), RMUParams(layer=0, steering_coeff=5.0)],
    ids=["finetune", "simnpo", "rmu"],
)
def test_resumed_run_equals_uninterrupted_run(
    tiny_llama: TinyLlama, finetuned: State, tmp_path: Path, params: MethodParams | None
) -> None:
    """A run killed after epoch 2 of 4 and resumed from its saved state ends with the same weights,
    rows and learning rates as one that ran straight through (AdamW moments, schedule and batch
    order all restored; RMU's frozen copy is still the starting model)."""
    from raysimnpo.training.state import save_training_state

    data: dict[str, Any] = (
        {"examples": FORGET + RETAIN}
        if params is None
        else {"unlearn": UnlearnInputs(forget=FORGET, retain=RETAIN), "params": params}
    )
    run = settings(epochs=4, warmup_epochs=0.5)

    straight = original(tiny_llama, finetuned)
    expected = train(straight, run, pad_id=PAD_ID, seed=5, **data)

    def save_then_stop_after_2(rows: list[dict[str, float]], optimizer: Any, scheduler: Any) -> None:
        save_training_state(tmp_path / f"epoch-{len(rows)}", first, optimizer, scheduler, rows)
        if len(rows) == 2:
            raise StopAfter

    first = original(tiny_llama, finetuned)
    with pytest.raises(StopAfter):
        train(first, run, pad_id=PAD_ID, seed=5, epoch_end=save_then_stop_after_2, **data)
    assert not same_weights(state(first), state(straight))

    resumed = original(tiny_llama, finetuned)
    summary = train(resumed, run, pad_id=PAD_ID, seed=5, resume_from=tmp_path / "epoch-2", **data)
    assert summary.resumed_from_epoch == 2
    assert [r["epoch"] for r in summary.epochs] == [1, 2, 3, 4]
    for got, want in zip(summary.epochs, expected.epochs, strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    for name, value in state(straight).items():
        torch.testing.assert_close(state(resumed)[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_saved_state_holds_no_pickle(tiny_llama: TinyLlama, finetuned: State, tmp_path: Path) -> None:
    from raysimnpo.training.state import save_training_state

    saved: list[Path] = []

    def save(rows: list[dict[str, float]], optimizer: Any, scheduler: Any) -> None:
        saved.append(tmp_path / f"epoch-{len(rows)}")
        save_training_state(saved[-1], model, optimizer, scheduler, rows)

    model = original(tiny_llama, finetuned)
    unlearn_inputs = UnlearnInputs(forget=FORGET, retain=RETAIN)
    train(
        model,
        settings(epochs=1),
        pad_id=PAD_ID,
        seed=0,
        unlearn=unlearn_inputs,
        params=SimNPOParams(),
        epoch_end=save,
    )
    names = sorted(p.name for p in saved[0].iterdir())
    assert names == ["optimizer.safetensors", "state.json", "weights.safetensors"]
    state_json = json.loads((saved[0] / "state.json").read_text())
    assert state_json["epochs_done"] == 1 and state_json["scheduler"]["last_epoch"] == 2
