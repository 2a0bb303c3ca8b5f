"""raysimnpo.benchmarks.tofu_evaluation: TOFU's metrics from hand-made per-example statistics (values worked out by
hand, DESIGN §6), and the whole evaluator on the real TOFU files with a tiny model."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raysimnpo.benchmarks.tofu import UTILITY_SPECS, EvalSplitSpec, eval_split_specs, load_tofu_run_data
from raysimnpo.benchmarks.tofu_evaluation import evaluate_tofu, tofu_metrics
from raysimnpo.config.base import EvalSettings
from raysimnpo.data.sources import TofuSource
from raysimnpo.models import TinyModelConfig, load_model_and_tokenizer

TOFU = Path(__file__).resolve().parents[3] / "shared" / "data" / "tofu"

pytestmark = pytest.mark.usefixtures("single_thread")

SPLITS: tuple[EvalSplitSpec, ...] = eval_split_specs("forget01")
SPLIT_NAMES = ("forget", "retain", "real_authors", "world_facts")
TOFU_METRICS = (
    *(f"{split}_{stat}" for split in SPLIT_NAMES for stat in ("prob", "rouge", "truth_ratio")),
    "forget_quality",
    "model_utility",
)
"""The 14 numbers of a TOFU evaluation."""
EXAMPLE_FIELDS = {
    "split", "index", "question", "answer", "answer_nll", "answer_tokens", "reference_nll",
    "reference_tokens", "perturbed_nll", "perturbed_tokens", "generation", "rouge_l", "prob", "truth_ratio",
}  # fmt: skip


def nll(p: float, n: int) -> float:
    """The summed NLL ℓ whose normalised probability exp(−ℓ/n) is p."""
    return -n * math.log(p)


def example(
    split: str,
    index: int,
    answer: tuple[float, int],
    reference: tuple[float, int] | None,
    perturbed: list[tuple[float, int]],
    rouge: float | None,
) -> dict[str, Any]:
    """Per-example statistics from normalised probabilities P̃ and token counts; reference None: the
    answer is the reference (real_authors / world_facts)."""
    ref = answer if reference is None else reference
    return {
        "split": split,
        "index": index,
        "question": f"q{index}",
        "answer": f"a{index}",
        "answer_nll": nll(*answer),
        "answer_tokens": answer[1],
        "reference_nll": nll(*ref),
        "reference_tokens": ref[1],
        "perturbed_nll": [nll(p, n) for p, n in perturbed],
        "perturbed_tokens": [n for _, n in perturbed],
        "generation": None if rouge is None else "text",
        "rouge_l": rouge,
    }


def hand_examples() -> list[dict[str, Any]]:
    """R = (Π_j P̃(perturbed_j))^(1/m) / P̃(reference) per row, given out of index order."""
    return [
        # forget 1: perturbed geometric mean √(0.5 · 0.125) = 0.25, reference 0.25 -> R = 1; not generated.
        example("forget", 1, (0.25, 5), (0.25, 2), [(0.5, 2), (0.125, 3)], None),
        # forget 0: P̃ 0.5; perturbed 0.25, 0.25 over reference 0.5 -> R = 0.5.
        example("forget", 0, (0.5, 2), (0.5, 3), [(0.25, 4), (0.25, 1)], 0.0),
        # retain 0: P̃ 0.5, R = 0.25/0.5 = 0.5 -> 1 − R = 0.5.   retain 1: P̃ 0.25, R = 0.25/0.125 = 2 -> 0.
        example("retain", 0, (0.5, 3), (0.5, 2), [(0.25, 2), (0.25, 6)], 1.0),
        example("retain", 1, (0.25, 4), (0.125, 1), [(0.25, 3), (0.25, 2)], 0.5),
        # real_authors: choice 0.5/(0.5 + 0.25 + 0.25) = 0.5, R = 0.25/0.5 = 0.5.
        example("real_authors", 0, (0.5, 2), None, [(0.25, 3), (0.25, 2)], 0.5),
        # world_facts: choice 0.5/(0.5 + 0.125 + 0.5) = 4/9, R = √(0.125 · 0.5)/0.5 = 0.5.
        example("world_facts", 0, (0.5, 4), None, [(0.125, 2), (0.5, 3)], 0.25),
    ]


EXPECTED = {
    "forget_prob": (0.5 + 0.25) / 2,
    "forget_rouge": 0.0,  # the row without a generation is left out
    "forget_truth_ratio": (min(0.5, 2.0) + 1.0) / 2,  # mean of min(R, 1/R)
    "retain_prob": (0.5 + 0.25) / 2,
    "retain_rouge": (1.0 + 0.5) / 2,
    "retain_truth_ratio": (0.5 + 0.0) / 2,  # mean of max(0, 1 − R)
    "real_authors_prob": 0.5,
    "real_authors_rouge": 0.5,
    "real_authors_truth_ratio": 0.5,
    "world_facts_prob": 4 / 9,
    "world_facts_rouge": 0.25,
    "world_facts_truth_ratio": 0.5,
    # hmean of the 9 utility numbers: 9 / (8/3 + 4/3 + 4 + 2 + 2 + 2 + 9/4 + 4 + 2) = 9 / 22.25.
    "model_utility": 9 / 22.25,
}


def test_tofu_metrics_by_hand_against_retrain() -> None:
    # Unlearned forget ratios {0.5, 1} against Retrain's {2, 3, 4}: fully separated, KS statistic 1,
    # exact p-value = 2 of the C(5, 2) = 10 orderings = 0.2, the floor for sizes 2 and 3.
    metrics, examples = tofu_metrics(hand_examples(), SPLITS, np.array([2.0, 3.0, 4.0]))
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert metrics["forget_quality"] == pytest.approx(0.2, abs=1e-12)
    assert metrics["forget_quality_ks_statistic"] == 1.0
    assert metrics["forget_quality_at_floor"] == 1.0
    assert set(metrics) == {*TOFU_METRICS, "forget_quality_ks_statistic", "forget_quality_at_floor"}
    # Per-example prob and truth ratio, in index order within each split.
    got = [(e["split"], e["index"], e["prob"], e["truth_ratio"]) for e in examples]
    expected = [
        ("forget", 0, 0.5, 0.5),
        ("forget", 1, 0.25, 1.0),
        ("retain", 0, 0.5, 0.5),
        ("retain", 1, 0.25, 2.0),
        ("real_authors", 0, 0.5, 0.5),
        ("world_facts", 0, 4 / 9, 0.5),
    ]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2:] for g in got], [e[2:] for e in expected], rtol=1e-12)


def test_tofu_metrics_forget_quality_cases() -> None:
    # The same ratios as Retrain: KS statistic 0, p-value 1.
    metrics, _ = tofu_metrics(hand_examples(), SPLITS, np.array([1.0, 0.5]))
    assert (metrics["forget_quality"], metrics["forget_quality_ks_statistic"]) == (1.0, 0.0)
    assert metrics["forget_quality_at_floor"] == 0.0
    # No Retrain ratios: this model is Retrain, FQ = 1 by construction.
    metrics, _ = tofu_metrics(hand_examples(), SPLITS, None)
    assert metrics["forget_quality"] == 1.0
    # A split whose questions were all left ungenerated has ROUGE NaN (and so does not fake a 0).
    rows = [dict(e, rouge_l=None, generation=None) if e["split"] == "forget" else e for e in hand_examples()]
    metrics, _ = tofu_metrics(rows, SPLITS, None)
    assert math.isnan(metrics["forget_rouge"])
    assert metrics["model_utility"] == pytest.approx(9 / 22.25, abs=1e-12)  # forget ROUGE is not in MU


@pytest.mark.skipif(not TOFU.is_dir(), reason=f"real TOFU files not found at {TOFU}")
def test_evaluator_on_real_tofu_files(tmp_path: Path) -> None:
    data = load_tofu_run_data(TofuSource(kind="local", path=str(TOFU)), "forget01", tmp_path)
    assert [s.name for s in data.eval_splits] == list(SPLIT_NAMES)
    assert [s.split for s in data.eval_splits[1:]] == [s.split for s in UTILITY_SPECS]
    loaded = load_model_and_tokenizer(
        "tiny",
        cache_dir=tmp_path,
        tokenizer_corpus=data.corpus()[:2000],
        tiny=TinyModelConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=500,
        ),
    )
    splits = [dataclasses.replace(s, rows=s.rows[:4]) for s in data.eval_splits]
    retrain_ratios = np.array([0.2, 0.4, 0.6, 0.8])
    evaluation = evaluate_tofu(
        loaded.model,
        loaded.tokenizer,
        loaded.prompt_format,
        splits,
        EvalSettings(max_new_tokens=4, batch_size=16),
        256,
        retrain_ratios,
    )
    metrics = evaluation.metrics
    for key in TOFU_METRICS:
        assert key in metrics and math.isfinite(metrics[key]), key
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])  # probs, ROUGE, truth scores, FQ, MU
    assert 0.0 <= metrics["forget_quality_ks_statistic"] <= 1.0
    # An untrained model spreads its probability: P̃ of an answer is far below 1.
    assert metrics["forget_prob"] < 0.1 and metrics["retain_prob"] < 0.1

    assert len(evaluation.examples) == 16
    for split in splits:
        rows = [e for e in evaluation.examples if e["split"] == split.name]
        assert [e["index"] for e in rows] == [0, 1, 2, 3]
        for e, source in zip(rows, split.rows, strict=True):
            assert set(e) == EXAMPLE_FIELDS
            assert (e["question"], e["answer"]) == (source["question"], source["answer"])
            m = len(source["perturbed_answer"])
            assert len(e["perturbed_nll"]) == len(e["perturbed_tokens"]) == m
            assert e["answer_tokens"] > 0 and all(n > 0 for n in e["perturbed_tokens"])
            assert all(
                math.isfinite(x) and x > 0 for x in [e["answer_nll"], e["reference_nll"], *e["perturbed_nll"]]
            )
            assert isinstance(e["generation"], str) and 0.0 <= e["rouge_l"] <= 1.0
            assert 0.0 < e["prob"] <= 1.0 and e["truth_ratio"] > 0
            if split.reference_field == "answer":  # real_authors / world_facts: the answer is the reference
                assert (e["reference_nll"], e["reference_tokens"]) == (e["answer_nll"], e["answer_tokens"])
    assert {len(e["perturbed_nll"]) for e in evaluation.examples if e["split"] == "forget"} == {5}
    assert {len(e["perturbed_nll"]) for e in evaluation.examples if e["split"] == "real_authors"} == {3}
    # Every aggregate can be recomputed from the per-example rows (DESIGN §6).
    again, _ = tofu_metrics(evaluation.examples, splits, retrain_ratios)
    assert again == pytest.approx(metrics, rel=1e-12)
    np.testing.assert_array_equal(
        evaluation.truth_ratios("forget"), [e["truth_ratio"] for e in evaluation.examples[:4]]
    )
