"""raysimnpo.recipes.prepare on the small generated dataset: cached prepared models are re-evaluated
under new evaluation settings, the noise ceiling's second Retrain, what prepare fine-tunes and the
batches fine-tuning on workers refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysimnpo.config.run import RunSettings
from raysimnpo.errors import UserInputError
from raysimnpo.recipes import unlearn
from raysimnpo.recipes.prepare import (
    SECOND_RETRAIN,
    FineTune,
    check_finetune_batches,
    fine_tunes,
    prepare,
    prepared_dirs,
    second_retrain_config,
)
from raysimnpo.recipes.workspace import workspace

pytestmark = pytest.mark.usefixtures("single_thread")


def test_new_evaluation_settings_reevaluate_cached_weights(
    first: unlearn.RunResult, config: RunSettings
) -> None:
    changed = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"max_new_tokens": 3})}
    )
    logs: list[str] = []
    second = unlearn.run(changed, log=logs.append)
    assert sum("weights cached" in line for line in logs) == 2
    assert not any("fine-tuning" in line for line in logs)
    # The same weights: probabilities agree; only generation-based numbers may move.
    assert second.original.metrics["forget_prob"] == first.original.metrics["forget_prob"]
    assert all(len((e["generation"] or "").split()) <= 3 for e in second.original.examples)


def test_noise_ceiling_is_a_second_retrain_scored_against_the_first(
    first: unlearn.RunResult, config: RunSettings
) -> None:
    """`evaluation.noise_ceiling`: Retrain from seed + 1 (same data and tokenizer), its forget quality
    measured against Retrain's truth ratios, becomes Retrain's `forget_quality_noise_ceiling`."""
    import pyarrow.parquet as pq

    from raysimnpo.maths.metrics import NOISE_CEILING
    from raysimnpo.maths.metrics.tofu import forget_quality

    asked = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"noise_ceiling": True})}
    )
    logs: list[str] = []
    ws = workspace(asked)
    prepared = prepare(ws, log=logs.append)
    assert any("Retrain (seed + 1): fine-tuning" in line for line in logs)
    ceiling = prepared.retrain.metrics[NOISE_CEILING]
    # Recomputed by hand from the two Retrains' stored forget truth ratios (KS test, DESIGN §6).
    other = asked.model_copy(update={"seed": asked.seed + 1})
    second_dir = prepared_dirs(other)[1]
    (eval_dir,) = second_dir.glob("eval-*")

    rows = pq.read_table(eval_dir / "examples.parquet").to_pylist()
    second = [e["truth_ratio"] for e in rows if e["split"] == "forget"]
    assert ceiling == pytest.approx(forget_quality(second, prepared.retrain.forget_truth_ratios()).pvalue)
    assert 0.0 < ceiling <= 1.0
    # The first Retrain and the Original are the cached ones: only the second Retrain is new.
    assert sum("fine-tuning" in line for line in logs) == 1


def test_fine_tunes_lists_what_prepare_trains_and_leaves_released_models_out(config: RunSettings) -> None:
    root = Path("/prepared")
    original_dir, retrain_dir = prepared_dirs(config, root)
    assert fine_tunes(config, root) == [
        FineTune("Retrain", retrain_dir, "retrain", 0),
        FineTune("Original", original_dir, "original", 0),
    ]
    ceiling = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"noise_ceiling": True})}
    )
    second = fine_tunes(ceiling, root)[-1]
    # the folder noise_ceiling evaluates, from seed + 1
    assert second == FineTune(
        SECOND_RETRAIN,
        prepared_dirs(second_retrain_config(ceiling), root)[1],
        "retrain",
        1,
    )
    released = config.model_copy(
        update={
            "data": config.data.model_copy(
                update={"original_model": "org/tofu_full", "retrain_model": "org/tofu_retain90"}
            )
        }
    )
    assert fine_tunes(released, root) == []


def test_fine_tuning_on_workers_refuses_batches_it_cannot_split(config: RunSettings) -> None:
    # full + utility QA: 76 examples for the Original, 70 for Retrain.
    ws = workspace(config)
    check_finetune_batches(ws, "original", 2)  # batches of 16: the last holds 12
    check_finetune_batches(ws.for_run(with_prepare_batch(config, 1)), "original", 1)
    with pytest.raises(
        UserInputError, match=r"^prepare\.batch_size: 1 cannot be split over 2 workers; allowed: >= 2$"
    ):
        check_finetune_batches(ws.for_run(with_prepare_batch(config, 1)), "original", 2)
    with pytest.raises(
        UserInputError,
        match=r"^prepare\.batch_size: 15 leaves the original set's 76 examples a last batch of 1 for 2 "
        r"workers; allowed: a batch size that leaves 0 or at least 2 examples$",
    ):
        check_finetune_batches(ws.for_run(with_prepare_batch(config, 15)), "original", 2)
    check_finetune_batches(ws.for_run(with_prepare_batch(config, 15)), "retrain", 2)  # 70 = 4·15 + 10


def with_prepare_batch(config: RunSettings, batch_size: int) -> RunSettings:
    return config.model_copy(update={"prepare": config.prepare.model_copy(update={"batch_size": batch_size})})
