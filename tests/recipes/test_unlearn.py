"""raysimnpo.recipes.unlearn end to end on the small generated dataset: one run gives Original, Retrain and
unlearned metrics, a second run reuses the prepared models, and `python -m raysimnpo.run --json`
prints them as one JSON object."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from raysimnpo.config.run import RunSettings
from raysimnpo.data.generators.tofu import TofuGeneratorConfig
from raysimnpo.errors import UserInputError
from raysimnpo.recipes import unlearn as recipe

pytestmark = pytest.mark.usefixtures("single_thread")

TOFU_METRICS = (
    *(
        f"{s}_{m}"
        for s in ("forget", "retain", "real_authors", "world_facts")
        for m in ("prob", "rouge", "truth_ratio")
    ),
    "forget_quality",
    "model_utility",
)


def run_settings() -> dict[str, Any]:
    """The `run:` section: small generated data, a very small tiny model, 2 prepare epochs."""
    return {
        "seed": 0,
        "device": "cpu",
        "data": {
            "source": {
                "kind": "generated",
                "generator": TofuGeneratorConfig.preset("small").model_dump(mode="json"),
            },
            "forget_split": "forget10",
            "train_on_utility_splits": True,
        },
        "model": {
            "name": "tiny",
            "dtype": "float32",
            "tiny": {
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "intermediate_size": 64,
                "vocab_size": 300,
            },
        },
        "prepare": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16, "max_length": 128},
        "unlearn": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "max_length": 128},
        "method": {"name": "simnpo"},
        "evaluation": {"batch_size": 64, "max_new_tokens": 4, "engine": "in_process"},
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def config(cache: Path) -> RunSettings:
    return RunSettings.model_validate({**run_settings(), "cache_dir": str(cache)})


@pytest.fixture(scope="module")
def first(single_thread: None, config: RunSettings) -> recipe.RunResult:
    return recipe.run(config)


def check_metrics(metrics: dict[str, float]) -> None:
    for key in TOFU_METRICS:
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))


def test_run_gives_original_retrain_and_unlearned_metrics(
    first: recipe.RunResult, config: RunSettings
) -> None:
    for metrics in (first.original.metrics, first.retrain.metrics, first.unlearned.metrics):
        check_metrics(metrics)
    assert first.retrain.metrics["forget_quality"] == 1.0  # Retrain against itself
    assert first.retrain.metrics["forget_quality_ks_statistic"] == 0.0
    # 6 forget QA (one author of 10, 6 QA each) in batches of 8: one step an epoch, 2 epochs.
    assert [row["epoch"] for row in first.training.epochs] == [1, 2]
    n_forget = sum(1 for e in first.unlearned.examples if e["split"] == "forget")
    assert n_forget == 6 == len(first.retrain.forget_truth_ratios())
    original_dir, retrain_dir = recipe.prepared_dirs(config)
    evaluation = f"eval-{recipe.evaluation_key(config)}"
    for folder in (original_dir, retrain_dir):
        assert (folder / evaluation / "metrics.json").is_file() and (
            folder / evaluation / "examples.parquet"
        ).is_file()
        assert (folder / "model" / "model.safetensors").is_file()
    assert first.original.path == original_dir / "model"


def test_second_run_reuses_cache_and_repeats_numbers(first: recipe.RunResult, config: RunSettings) -> None:
    folders = recipe.prepared_dirs(config)
    evaluation = f"eval-{recipe.evaluation_key(config)}"
    stamps = {
        p: p.stat().st_mtime_ns for f in folders for p in (f, f / evaluation / "metrics.json", f / "model")
    }
    logs: list[str] = []
    second = recipe.run(config, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sum("cached at" in line for line in logs) == 2
    assert not any("fine-tuning" in line for line in logs)
    assert second.original.metrics == first.original.metrics
    assert second.retrain.metrics == first.retrain.metrics
    # Same config and seed: the unlearning repeats exactly.
    assert second.unlearned.metrics == first.unlearned.metrics
    assert second.training.epochs == first.training.epochs


def test_every_epoch_run_scores_each_epoch_and_ends_with_the_same_model(
    first: recipe.RunResult, config: RunSettings
) -> None:
    every = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"every_epoch": True})}
    )
    logs: list[str] = []
    run = recipe.run(every, log=logs.append)
    # the same training: evaluating between epochs changes no weight
    losses = ("forget_loss", "retain_loss")
    assert [{k: r[k] for k in losses} for r in run.training.epochs] == [
        {k: r[k] for k in losses} for r in first.training.epochs
    ]
    for row in run.training.epochs:
        check_metrics(row)
    # the last epoch's evaluation is the run's, and equals a separate evaluation of the final model
    last = run.training.epochs[-1]
    assert {k: last[k] for k in TOFU_METRICS} == {k: run.unlearned.metrics[k] for k in TOFU_METRICS}
    assert run.unlearned.metrics["forget_quality"] == pytest.approx(
        first.unlearned.metrics["forget_quality"], rel=1e-9
    )
    assert run.unlearned.metrics["model_utility"] == pytest.approx(
        first.unlearned.metrics["model_utility"], rel=1e-9
    )
    shown = [line for line in logs if line.startswith("[unlearn] epoch")]
    assert len(shown) == 2 and all("forget_quality" in line and "model_utility" in line for line in shown)


def test_new_evaluation_settings_reevaluate_cached_weights(
    first: recipe.RunResult, config: RunSettings
) -> None:
    changed = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"max_new_tokens": 3})}
    )
    logs: list[str] = []
    second = recipe.run(changed, log=logs.append)
    assert sum("weights cached" in line for line in logs) == 2
    assert not any("fine-tuning" in line for line in logs)
    # The same weights: probabilities agree; only generation-based numbers may move.
    assert second.original.metrics["forget_prob"] == first.original.metrics["forget_prob"]
    assert all(len((e["generation"] or "").split()) <= 3 for e in second.original.examples)


def test_cli_prints_one_json_object(first: recipe.RunResult, cache: Path, tmp_path: Path) -> None:
    # The same data/model/prepare settings: the CLI reuses the prepared models in the shared cache.
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "cli-test", "run": run_settings()}, sort_keys=False))
    env = {**os.environ, "RAYSIMNPO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "raysimnpo.run", str(path), "--method", "npo", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert list(payload["metrics"]) == ["Original", "Retrain", "npo"]
    for metrics in payload["metrics"].values():
        check_metrics(metrics)
    assert payload["metrics"]["Retrain"]["forget_quality"] == 1.0
    assert payload["metrics"]["Original"] == first.original.metrics  # read from the shared cache
    assert payload["config"]["cache_dir"] == str(cache)
    assert payload["config"]["method"]["name"] == "npo"
    assert "cached at" in proc.stderr


def test_noise_ceiling_is_a_second_retrain_scored_against_the_first(
    first: recipe.RunResult, config: RunSettings
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
    ws = recipe.workspace(asked)
    prepared = recipe.prepare(ws, log=logs.append)
    assert any("Retrain (seed + 1): fine-tuning" in line for line in logs)
    ceiling = prepared.retrain.metrics[NOISE_CEILING]
    # Recomputed by hand from the two Retrains' stored forget truth ratios (KS test, DESIGN §6).
    other = asked.model_copy(update={"seed": asked.seed + 1})
    second_dir = recipe.prepared_dirs(other)[1]
    (eval_dir,) = second_dir.glob("eval-*")

    rows = pq.read_table(eval_dir / "examples.parquet").to_pylist()
    second = [e["truth_ratio"] for e in rows if e["split"] == "forget"]
    assert ceiling == pytest.approx(forget_quality(second, prepared.retrain.forget_truth_ratios()).pvalue)
    assert 0.0 < ceiling <= 1.0
    # The first Retrain and the Original are the cached ones: only the second Retrain is new.
    assert sum("fine-tuning" in line for line in logs) == 1


def test_fine_tunes_lists_what_prepare_trains_and_leaves_released_models_out(config: RunSettings) -> None:
    root = Path("/prepared")
    original_dir, retrain_dir = recipe.prepared_dirs(config, root)
    assert recipe.fine_tunes(config, root) == [
        recipe.FineTune("Retrain", retrain_dir, "retrain", 0),
        recipe.FineTune("Original", original_dir, "original", 0),
    ]
    ceiling = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"noise_ceiling": True})}
    )
    second = recipe.fine_tunes(ceiling, root)[-1]
    # the folder noise_ceiling evaluates, from seed + 1
    assert second == recipe.FineTune(
        recipe.SECOND_RETRAIN,
        recipe.prepared_dirs(recipe.second_retrain_config(ceiling), root)[1],
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
    assert recipe.fine_tunes(released, root) == []


def test_fine_tuning_on_workers_refuses_batches_it_cannot_split(config: RunSettings) -> None:
    # full + utility QA: 76 examples for the Original, 70 for Retrain.
    ws = recipe.workspace(config)
    recipe.check_finetune_batches(ws, "original", 2)  # batches of 16: the last holds 12
    recipe.check_finetune_batches(ws.for_run(with_prepare_batch(config, 1)), "original", 1)
    with pytest.raises(
        UserInputError, match=r"^prepare\.batch_size: 1 cannot be split over 2 workers; allowed: >= 2$"
    ):
        recipe.check_finetune_batches(ws.for_run(with_prepare_batch(config, 1)), "original", 2)
    with pytest.raises(
        UserInputError,
        match=r"^prepare\.batch_size: 15 leaves the original set's 76 examples a last batch of 1 for 2 "
        r"workers; allowed: a batch size that leaves 0 or at least 2 examples$",
    ):
        recipe.check_finetune_batches(ws.for_run(with_prepare_batch(config, 15)), "original", 2)
    recipe.check_finetune_batches(ws.for_run(with_prepare_batch(config, 15)), "retrain", 2)  # 70 = 4·15 + 10


def with_prepare_batch(config: RunSettings, batch_size: int) -> RunSettings:
    return config.model_copy(update={"prepare": config.prepare.model_copy(update={"batch_size": batch_size})})


def test_workspace_copies_share_the_evaluation_encodings_of_the_same_format(first: recipe.RunResult) -> None:
    """A trial's copy (`for_run`) reuses the encodings; a copy prompted another way encodes anew."""
    ws = first.workspace
    assert ws is not None
    assert ws.for_run(ws.config).encoder is ws.encoder
    other = "llama2-chat" if ws.prompt_format == "plain" else "plain"
    reformatted = dataclasses.replace(ws, prompt_format=other)
    assert reformatted.encoder is not ws.encoder and reformatted.encoder.prompt_format == other
