"""raysimnpo.recipes.unlearn end to end on the small generated dataset: one run gives Original, Retrain and
unlearned metrics, a second run reuses the prepared models, and `python -m raysimnpo.run --json`
prints them as one JSON object."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysimnpo.config.run import RunSettings
from raysimnpo.recipes import unlearn
from raysimnpo.recipes.evaluate import evaluation_key
from raysimnpo.recipes.prepare import prepared_dirs

from .small_run import check_metrics, run_settings

pytestmark = pytest.mark.usefixtures("single_thread")


def test_run_gives_original_retrain_and_unlearned_metrics(
    first: unlearn.RunResult, config: RunSettings
) -> None:
    for metrics in (first.original.metrics, first.retrain.metrics, first.unlearned.metrics):
        check_metrics(metrics)
    assert first.retrain.metrics["forget_quality"] == 1.0  # Retrain against itself
    assert first.retrain.metrics["forget_quality_ks_statistic"] == 0.0
    # 6 forget QA (one author of 10, 6 QA each) in batches of 8: one step an epoch, 2 epochs.
    assert [row["epoch"] for row in first.training.epochs] == [1, 2]
    n_forget = sum(1 for e in first.unlearned.examples if e["split"] == "forget")
    assert n_forget == 6 == len(first.retrain.forget_truth_ratios())
    original_dir, retrain_dir = prepared_dirs(config)
    evaluation = f"eval-{evaluation_key(config)}"
    for folder in (original_dir, retrain_dir):
        assert (folder / evaluation / "metrics.json").is_file() and (
            folder / evaluation / "examples.parquet"
        ).is_file()
        assert (folder / "model" / "model.safetensors").is_file()
    assert first.original.path == original_dir / "model"


def test_second_run_reuses_cache_and_repeats_numbers(first: unlearn.RunResult, config: RunSettings) -> None:
    folders = prepared_dirs(config)
    evaluation = f"eval-{evaluation_key(config)}"
    stamps = {
        p: p.stat().st_mtime_ns for f in folders for p in (f, f / evaluation / "metrics.json", f / "model")
    }
    logs: list[str] = []
    second = unlearn.run(config, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sum("cached at" in line for line in logs) == 2
    assert not any("fine-tuning" in line for line in logs)
    assert second.original.metrics == first.original.metrics
    assert second.retrain.metrics == first.retrain.metrics
    # Same config and seed: the unlearning repeats exactly.
    assert second.unlearned.metrics == first.unlearned.metrics
    assert second.training.epochs == first.training.epochs


def test_cli_prints_one_json_object(first: unlearn.RunResult, cache: Path, tmp_path: Path) -> None:
    # The same data/model/prepare settings: the CLI reuses the prepared models in the shared cache.
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "cli-test", "run": run_settings()}, sort_keys=False))
    env = {**os.environ, "RAYSIMNPO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "raysimnpo.run", str(path), "--method", "npo", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # its runs/single/ output stays out of the checkout
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


def test_workspace_copies_share_the_evaluation_encodings_of_the_same_format(first: unlearn.RunResult) -> None:
    """A trial's copy (`for_run`) reuses the encodings; a copy prompted another way encodes anew."""
    ws = first.workspace
    assert ws is not None
    assert ws.for_run(ws.config).encoder is ws.encoder
    other = "llama2-chat" if ws.prompt_format == "plain" else "plain"
    reformatted = dataclasses.replace(ws, prompt_format=other)
    assert reformatted.encoder is not ws.encoder and reformatted.encoder.prompt_format == other
