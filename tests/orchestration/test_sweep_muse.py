"""A 2-trial MUSE sweep on generated data: Original/Retrain rows, trials evaluated with MUSE's
metrics through Ray Data actors, the sweep's objectives in the Optuna study, every model's per-example
rows in the `examples` table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from raysimnpo import results
from raysimnpo.cli import sweep

SMALL_MUSE_RUN = {
    "benchmark": "muse",
    "muse": {
        "source": {
            "kind": "generated",
            "generator": {"forget_articles": 4, "retain_articles": 4, "holdout_articles": 4, "icl_shots": 1},
        },
        "chunk_length": 64,
        "verbmem_max_new_tokens": 8,
        "knowmem_max_new_tokens": 4,
    },
    "model": {
        "name": "tiny",
        "tiny": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 400,
        },
    },
    "prepare": {"epochs": 2, "learning_rate": 3.0e-3, "batch_size": 16, "max_length": 128},
    "unlearn": {"epochs": 1, "learning_rate": 1.0e-3, "batch_size": 4, "max_length": 64},
    "method": {"name": "simnpo"},
    "evaluation": {"batch_size": 32, "generation_limit": 2},
}


@pytest.mark.ray
def test_two_trial_muse_sweep(tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "name": "musetest",
        "storage": str(tmp_path / "runs"),
        "run": dict(SMALL_MUSE_RUN, cache_dir=str(tmp_path / "cache")),
        "search": {
            "methods": ["simnpo", "npo"],
            "space": {"simnpo": {"method.beta": {"low": 1.0, "high": 4.0}}},
            "objectives": [
                {"metric": "privleak_abs", "mode": "min"},
                {"metric": "knowmem_retain", "mode": "max"},
            ],
            "num_trials": 2,
            "max_concurrent_trials": 1,
        },
    }
    path = tmp_path / "musetest.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert sweep.main([str(path)]) == 0
    assert "Pareto front (privleak_abs min, knowmem_retain max)" in capsys.readouterr().out

    root = results.results_root(str(tmp_path / "runs"), "musetest")
    trials = results.read_table(root, "trials").to_pylist()
    assert sorted(t["kind"] for t in trials) == ["original", "retrain", "trial", "trial"]
    done = [t for t in trials if t["kind"] == "trial"]
    assert all(t["status"] == "completed" and t["forget_quality"] is None for t in done)

    finals: dict[str, dict[str, float]] = {}
    for m in results.read_table(root, "metrics").to_pylist():
        if m["stage"] == "final":
            finals.setdefault(m["trial_id"], {})[m["metric"]] = m["value"]
    assert set(finals) == {t["trial_id"] for t in trials}
    assert finals["retrain"]["privleak"] == 0.0
    auc_retrain = finals["retrain"]["privleak_auc"]
    for t in done:
        m = finals[t["trial_id"]]
        assert m["privleak"] == pytest.approx((m["privleak_auc"] - auc_retrain) / auc_retrain * 100)
        assert m["privleak_abs"] == pytest.approx(abs(m["privleak"]))

    # Every evaluated model's per-example rows are in the `examples` table; the trials were evaluated
    # by Ray Data actors (the run's `evaluation.engine` default), the prepared models in-process.
    examples = results.read_table(root, "examples").to_pylist()
    timing = results.read_table(root, "metrics").to_pylist()
    for t in trials:
        mine = [e for e in examples if e["trial_id"] == t["trial_id"]]
        assert {e["split"] for e in mine} == {
            "verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget", "privleak_holdout",
        }  # fmt: skip
        assert len([e for e in mine if e["split"] == "knowmem_retain"]) == 2  # generation_limit
        assert all(e["min_k_score"] is not None for e in mine if e["split"].startswith("privleak_"))
        assert all(e["rouge_l_f1"] is not None for e in mine if not e["split"].startswith("privleak_"))
        if t["kind"] == "trial":
            phases = {
                m["metric"] for m in timing if m["trial_id"] == t["trial_id"] and m["stage"] == "timing"
            }
            assert "eval_startup_seconds" in phases

    with sqlite3.connect(tmp_path / "runs" / "musetest" / "optuna.sqlite") as db:
        states = [row[0] for row in db.execute("SELECT state FROM trials")]
        values = db.execute("SELECT COUNT(*) FROM trial_values").fetchone()[0]
    assert states == ["COMPLETE"] * 2 and values == 2 * 2  # two objectives per trial
