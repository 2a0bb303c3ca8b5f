"""`python -m raysimnpo.run` keeps the unlearned model (a Hugging Face folder), its per-example rows
and its metrics under `--out`; `raysimnpo.run(...)` is the same run as a notebook callable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import raysimnpo
from raysimnpo.cli import run

TINY = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_hidden_layers=1",
    "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=2",
    "model.tiny.intermediate_size=64",
    "prepare.epochs=1",
    "unlearn.epochs=1",
    "evaluation.max_new_tokens=4",
]


def settings(tmp_path: Path) -> list[str]:
    from raysimnpo.data.generators.tofu import TofuGeneratorConfig, generate_tofu_dataset

    data = tmp_path / "tofu"
    data.mkdir()
    generate_tofu_dataset(data, TofuGeneratorConfig.preset("small"))
    overrides = [
        *TINY,
        "data.source.kind=local",
        f"data.source.path={data}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    return [arg for o in overrides for arg in ("--set", o)]


def test_run_saves_a_reloadable_model_its_rows_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "kept"
    assert run.main(["tofu", "--method", "simnpo", "--json", "--out", str(out), *settings(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["examples.parquet", "metrics.json", "model"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == printed["metrics"]
    assert saved["config"]["method"]["name"] == "simnpo"
    unlearned = saved["metrics"]["simnpo"]
    assert 0.0 <= unlearned["forget_quality"] <= 1.0

    # The rows are the unlearned model's: TOFU's forget Prob is the mean of the forget rows' P̃(answer),
    # and its forget Truth Ratio the mean of min(R, 1/R).
    rows = pq.read_table(out / "examples.parquet").to_pylist()
    forget = [r for r in rows if r["split"] == "forget"]
    assert sum(r["prob"] for r in forget) / len(forget) == pytest.approx(unlearned["forget_prob"], rel=1e-6)
    ratios = [min(r["truth_ratio"], 1 / r["truth_ratio"]) for r in forget]
    assert sum(ratios) / len(ratios) == pytest.approx(unlearned["forget_truth_ratio"], rel=1e-6)

    # The folder reloads with from_pretrained, and holds the unlearned weights, not the Original's.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    original = next((tmp_path / "cache" / "prepared").glob("original-*")) / "model"
    before = AutoModelForCausalLM.from_pretrained(original)
    changed = [
        name
        for name, weight in model.state_dict().items()
        if not torch.equal(weight, before.state_dict()[name])
    ]
    assert changed and all(math.isfinite(w.float().sum().item()) for w in model.state_dict().values())


def test_an_existing_out_folder_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kept"
    out.mkdir()
    assert run.main(["tofu", "--method", "simnpo", "--out", str(out), *settings(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out: {out} already exists; give a new folder (nothing is overwritten)"]
    assert not (tmp_path / "cache" / "prepared").exists()


def test_the_package_attribute_is_the_callable_run(tmp_path: Path) -> None:
    """`raysimnpo.run` stays the module (`python -m raysimnpo.run`) and is callable."""
    overrides = settings(tmp_path)[1::2]
    saved = raysimnpo.run("tofu", method="npo", overrides=overrides, out=tmp_path / "npo", log=lambda _: None)
    assert raysimnpo.run is run and saved.out == tmp_path / "npo"
    assert json.loads((saved.out / "metrics.json").read_text())["metrics"] == saved.metrics
    assert set(saved.metrics) == {"Original", "Retrain", "npo"}
