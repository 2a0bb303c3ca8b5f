"""The one unlearning recipe on TorchTrainer workers: a chat-format model keeps its prompt format
through a 2-worker FSDP2 checkpoint, and a method registered from outside the package (here, in
this test) runs on 2 workers with nothing but its `methods.register` entry."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from ray import cloudpickle
from torch import Tensor

from raysimnpo.config.run import RunSettings
from raysimnpo.maths import objectives
from raysimnpo.maths.pareto import non_dominated_mask
from raysimnpo.methods import METHODS, Method, MethodParams, StepTerms, register
from raysimnpo.models import load_model_and_tokenizer
from raysimnpo.orchestration import invariance
from raysimnpo.orchestration.epochs import EpochEvaluation
from raysimnpo.orchestration.trainer import unlearn_with_torch_trainer
from raysimnpo.recipes.evaluate import EpochEvaluator, evaluate
from raysimnpo.recipes.unlearn import unlearn_model
from raysimnpo.recipes.workspace import Workspace, load_prepared_model, save_model, workspace
from raysimnpo.training.scoring import score_sequences


class BoundedAscentParams(MethodParams):
    """A made-up method: push down the mean per-token probability of the forget answers."""

    name: Literal["bounded_ascent"] = "bounded_ascent"
    retain_weight: float = Field(0.5, ge=0)


def bounded_ascent_loss(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    """L_f = mean_i exp(−ℓ_i/|y_i|) (bounded below by 0), plus λ · eq. 1's retain NLL."""
    assert t.retain_nll is not None and t.retain_tokens is not None
    return torch.exp(-t.forget_nll / t.forget_tokens).mean(), objectives.retain_nll_loss(
        t.retain_nll, t.retain_tokens
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSettings, Path, np.ndarray]:
    config, original, reference = invariance.prepare_case(tmp_path_factory.mktemp("one-path"))
    return config, original, np.asarray(reference)


@pytest.fixture
def bounded_ascent() -> Iterator[Method]:
    # Ray workers import the package, not this test module: send its code with the call.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    method = register(
        Method("bounded_ascent", BoundedAscentParams, bounded_ascent_loss, frozenset(), "a test's method")
    )
    try:
        yield method
    finally:
        del METHODS["bounded_ascent"]
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def forget_nll_per_token(model: Any, ws: Workspace) -> float:
    nll, n = score_sequences(model, ws.encode(ws.data.forget), 8, ws.pad_id)
    return float(nll.sum() / n.sum())


@pytest.mark.ray
def test_a_registered_method_runs_on_two_fsdp_workers(
    ray_cluster: None, tmp_path: Path, case: tuple[RunSettings, Path, np.ndarray], bounded_ascent: Method
) -> None:
    config, original, _ = case
    params = BoundedAscentParams(retain_weight=0.0)  # the forget term alone, so it shows
    with pytest.raises(ValueError, match="^method 'bounded_ascent' is already registered$"):
        register(bounded_ascent)
    out = unlearn_with_torch_trainer(
        config,
        str(original),
        str(tmp_path / "unlearned"),
        num_workers=2,
        use_gpu=False,
        reference_nll=None,
        storage_path=str(tmp_path / "ray"),
        name="bounded-ascent-2w",
        method=params,
    )
    ws = workspace(config)
    expected, summary = unlearn_model(ws, original, params)
    got = load_model_and_tokenizer(
        out["output_path"], dtype="float32", cache_dir=Path(config.cache_dir)
    ).model
    for name, value in expected.state_dict().items():
        assert float((got.state_dict()[name] - value).abs().max()) <= 1e-5, name
    for row, want in zip(out["epochs"], summary.epochs, strict=True):
        assert row["forget_loss"] == pytest.approx(want["forget_loss"], rel=1e-5)
        assert row["retain_loss"] == pytest.approx(want["retain_loss"], rel=1e-5)
    before = load_prepared_model(original, config)
    assert forget_nll_per_token(got, ws) > forget_nll_per_token(before, ws)


@pytest.mark.ray
def test_a_chat_model_unlearned_by_two_workers_reloads_and_evaluates_in_its_format(
    ray_cluster: None, tmp_path: Path, case: tuple[RunSettings, Path, np.ndarray]
) -> None:
    """The Original is recorded as a Llama-2 chat model (`[INST] q [/INST]` prompts; its name and
    tokenizer would say `plain`). Two FSDP2 workers unlearn it with SimNPO; the checkpoint they
    write loads back as llama2-chat and evaluates to the in-process run's metrics."""
    base, plain_original, reference = case
    ws_plain = workspace(base)
    chat_original = tmp_path / "chat-original"
    model = load_prepared_model(plain_original, base)
    save_model(model, ws_plain.tokenizer, "llama2-chat", chat_original)
    config = base.model_copy(update={"model": base.model.model_copy(update={"name": str(chat_original)})})
    ws = workspace(config)
    assert ws.prompt_format == "llama2-chat"

    objectives = [("forget_quality", "max"), ("model_utility", "max")]
    out = unlearn_with_torch_trainer(
        config,
        str(chat_original),
        str(tmp_path / "unlearned"),
        num_workers=2,
        use_gpu=False,
        reference_nll=None,
        storage_path=str(tmp_path / "ray"),
        name="chat-2w",
        # every epoch evaluated on the two workers, its selectable weights kept beside the output
        epoch_evaluation=EpochEvaluation(
            retrain_reference=list(reference), objectives=objectives, front=None, trial_id="chat-2w"
        ),
    )
    reloaded = load_model_and_tokenizer(out["output_path"], dtype="float32", cache_dir=Path(config.cache_dir))
    assert reloaded.prompt_format == "llama2-chat"
    from_workers = evaluate(
        dataclasses.replace(ws, tokenizer=reloaded.tokenizer, prompt_format=reloaded.prompt_format),
        reloaded.model,
        reference,
    ).metrics

    evaluator = EpochEvaluator(ws, reference, objectives, keep=tmp_path / "in-process")
    in_process, summary = unlearn_model(ws, chat_original, after_epoch=evaluator)
    expected = evaluate(ws, in_process, reference).metrics
    assert from_workers.keys() == expected.keys()
    for name, value in expected.items():
        assert from_workers[name] == pytest.approx(value, rel=1e-4, abs=1e-9), name
        # the last epoch's evaluation on the workers is the final model's evaluation
        assert out["evaluation"]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-9), name
    # Per-epoch FQ and MU are the same on two FSDP workers as in one process, epoch by epoch.
    assert len(out["epochs"]) == len(summary.epochs) == config.unlearn.epochs
    for on_workers, here in zip(out["epochs"], summary.epochs, strict=True):
        for name, _ in objectives:
            assert on_workers[name] == pytest.approx(here[name], rel=1e-4, abs=1e-9), name

    # The kept epochs are the ones no other epoch of the run dominates; the workers moved the last
    # one's folder to the run's final checkpoint instead of writing the same weights twice.
    def kept(prefix: str) -> set[int]:
        return {int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob(f"{prefix}.epoch-*")}

    points = [[e[m] for m, _ in objectives] for e in summary.epochs]
    front = {i + 1 for i, keep in enumerate(non_dominated_mask(points, ["max", "max"])) if keep}
    assert kept("in-process") == front
    assert kept("unlearned") == front - {config.unlearn.epochs}
    assert (tmp_path / "unlearned" / "model.safetensors").is_file()
    # The format matters: the same weights prompted as a base model score differently.
    as_plain = evaluate(dataclasses.replace(ws, prompt_format="plain"), reloaded.model, reference).metrics
    assert as_plain["forget_prob"] != pytest.approx(expected["forget_prob"], rel=1e-3)
