"""raysimnpo.recipes.relearn: which examples each attack relearns, and an attack on a tiny model whose
epoch-0 forget quality is the full evaluation's and whose forget probability rises as it relearns."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysimnpo.config.run import RunSettings
from raysimnpo.config.sweep import RelearnSettings
from raysimnpo.recipes import relearn as relearning
from raysimnpo.recipes.prepare import prepare
from raysimnpo.recipes.workspace import load_prepared_model, workspace

from .small_run import run_settings

pytestmark = pytest.mark.usefixtures("single_thread")


def test_shortest_takes_the_fewest_answer_tokens_ties_in_order() -> None:
    # 20% of 10 = 2: the two 2-token answers at positions 1 and 3 (position 8 also has 2 but comes later).
    tokens = [5, 2, 9, 2, 7, 3, 4, 8, 2, 6]
    assert relearning.attack_indices(tokens, "shortest", 0.2, seed=0) == [1, 3]
    assert relearning.attack_indices(tokens, "shortest", 0.4, seed=0) == [1, 3, 5, 8]
    assert relearning.attack_indices(tokens, "shortest", 0.01, seed=0) == [1]  # at least one example


def test_random_draws_repeat_per_seed_and_differ_across_seeds() -> None:
    tokens = list(range(100))
    draws = {seed: relearning.attack_indices(tokens, "random", 0.2, seed) for seed in range(5)}
    assert all(len(d) == 20 and d == sorted(set(d)) for d in draws.values())
    assert draws[0] == relearning.attack_indices(tokens, "random", 0.2, 0)
    assert len({tuple(d) for d in draws.values()}) == 5
    with pytest.raises(ValueError, match="attack: 'longest'; allowed: shortest, random"):
        relearning.attack_indices(tokens, "longest", 0.2, 0)  # type: ignore[arg-type]


def test_relearning_the_original_raises_forget_probability(tmp_path: Path) -> None:
    config = RunSettings.model_validate({**run_settings(), "cache_dir": str(tmp_path / "cache")})
    ws = workspace(config)
    prepared = prepare(ws)
    retrain = prepared.retrain.forget_truth_ratios()
    settings = RelearnSettings(epochs=2, learning_rate=3e-3, batch_size=2, fraction=0.5)

    def attack(seed: int) -> list[dict]:
        model = load_prepared_model(prepared.original.path, config)
        return relearning.relearn(ws, model, "random", seed, settings, retrain)

    rows = attack(seed=1)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert {r["relearn_examples"] for r in rows} == {3}  # half of forget10's 6 questions
    assert {(r["attack"], r["seed"]) for r in rows} == {("random", 1)}
    # Epoch 0 is the model as given: the same forget quality and probability as its full evaluation.
    assert rows[0]["forget_quality"] == pytest.approx(prepared.original.metrics["forget_quality"], rel=1e-9)
    assert rows[0]["forget_prob"] == pytest.approx(prepared.original.metrics["forget_prob"], rel=1e-6)
    assert rows[2]["forget_prob"] > rows[1]["forget_prob"] > rows[0]["forget_prob"]
    assert attack(seed=1) == rows  # same seed, same numbers
