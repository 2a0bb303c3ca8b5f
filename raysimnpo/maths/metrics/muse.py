"""MUSE metrics (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation"; SimNPO Table A1).

* VerbMem on D_f: ROUGE-L F1 between a 128-token greedy continuation of a forget-text prompt and the
  true continuation, averaged over prompts (lower is better after unlearning).
* KnowMem on D_f / D_r: ROUGE-L F1 between the greedy answer to a few-shot `Question:/Answer:` prompt
  (32 new tokens, cut at the first blank line or the next `Question:`) and the true answer, averaged
  (lower is better on D_f, higher on D_r).
* PrivLeak = (AUC_unlearned − AUC_retrain) / AUC_retrain × 100, where AUC is MUSE's
  `forget_holdout_Min-40%`: the AUC of the Min-40% log-prob score telling holdout texts (positive) from
  forget texts. A model that still remembers D_f scores forget texts higher, so its AUC is near 0 and
  PrivLeak near −100 (under-unlearning); an over-unlearned model gives a positive PrivLeak; closest to 0
  is best. The AUC of Retrain is measured on our own Retrain model, or taken from the published
  constants when the benchmark's released models are evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# mia (scipy) and text (rouge-score, nltk) are imported by the functions that score: the constants
# below are read when a sweep config is validated, which should not pay for those imports.

MIN_K = 0.4
"""MUSE's PrivLeak uses Min-40% Prob."""
PUBLISHED_AUC_RETRAIN: dict[str, float] = {"news": 0.4772, "books": 0.5393}
"""`forget_holdout_Min-40%` AUC of the released MUSE Retrain models (MUSE's constants.py)."""
VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32


def verbmem(continuations: Sequence[str], true_continuations: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of greedy continuations against the true continuations (VerbMem)."""
    from .text import rouge_l_f1_batch

    return float(np.mean(rouge_l_f1_batch(continuations, true_continuations)))


def cut_answer(generation: str) -> str:
    """A few-shot answer up to the first blank line or the next `Question:` (MUSE's KnowMem cut)."""
    text = generation.split("\n\n", 1)[0]
    text = text.split("Question:", 1)[0]
    return text.strip()


def knowmem(generations: Sequence[str], answers: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of the cut greedy answers against the true answers (KnowMem)."""
    from .text import rouge_l_f1_batch

    return float(np.mean(rouge_l_f1_batch([cut_answer(g) for g in generations], answers)))


def few_shot_prompt(icl: Sequence[tuple[str, str]], question: str) -> str:
    """MUSE's KnowMem prompt: `Question: q\\nAnswer: a\\n\\n` per in-context example, then the question."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return f"{shots}Question: {question}\nAnswer:"


def privleak_auc(
    forget_logprobs: Sequence[ArrayLike], holdout_logprobs: Sequence[ArrayLike], k: float = MIN_K
) -> float:
    """MUSE's `forget_holdout_Min-K%` AUC: holdout texts are the positives of the Min-K% score."""
    from .mia import auc, min_k_percent_scores

    return auc(min_k_percent_scores(holdout_logprobs, k), min_k_percent_scores(forget_logprobs, k))


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """PrivLeak = (AUC_unlearned − AUC_retrain) / AUC_retrain × 100 (percent; closest to 0 is best)."""
    if auc_retrain <= 0:
        raise ValueError(f"auc_retrain must be > 0; got {auc_retrain}")
    return (auc_unlearned - auc_retrain) / auc_retrain * 100.0
