"""ROUGE-L with rouge-score's RougeScorer(["rougeL"], use_stemmer=True) (DESIGN §6).

TOFU reports the recall (LCS / reference length); MUSE's VerbMem and KnowMem report the F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from numpy.typing import NDArray
from rouge_score import rouge_scorer


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: LCS(prediction, reference) / |reference| tokens (TOFU's ROUGE)."""
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].recall)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of LCS precision and recall (MUSE's VerbMem / KnowMem)."""
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) differ in length"
        )


def rouge_l_recall_batch(predictions: Sequence[str], references: Sequence[str]) -> NDArray[np.float64]:
    """`rouge_l_recall` per (prediction, reference) pair."""
    _check_lengths(predictions, references)
    return np.array(
        [rouge_l_recall(p, r) for p, r in zip(predictions, references, strict=True)], dtype=np.float64
    )


def rouge_l_f1_batch(predictions: Sequence[str], references: Sequence[str]) -> NDArray[np.float64]:
    """`rouge_l_f1` per (prediction, reference) pair."""
    _check_lengths(predictions, references)
    return np.array(
        [rouge_l_f1(p, r) for p, r in zip(predictions, references, strict=True)], dtype=np.float64
    )
