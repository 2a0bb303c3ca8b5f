"""Membership-inference scores and their AUC (DESIGN §6; MUSE's PrivLeak, Shi et al. 2024).

* Min-K% Prob (Shi et al., 2024, "Detecting Pretraining Data from Large Language Models"): the mean of
  the K% lowest token log-probabilities of a text, log π_θ(x_t | x_<t) over every token after the first.
  Higher means more likely a member. MUSE uses K = 40%. The count is ⌊K·n⌋ as in the reference code,
  but at least one token (so a short text is scored by its least likely token, not by an empty mean).
* AUC: the Mann-Whitney estimate P(s_pos > s_neg) + ½ P(s_pos = s_neg) over all pairs, which equals
  sklearn's roc_auc_score with the positives labelled 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats


def min_k_percent_score(token_logprobs: ArrayLike, k: float = 0.4) -> float:
    """Min-K% Prob of one text: the mean of its ⌊k·n⌋ (at least 1) lowest token log-probs."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1]; got {k}")
    values = np.asarray(token_logprobs, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("min_k_percent_score: a text needs at least one scored token")
    count = max(1, math.floor(k * values.size))
    return float(np.mean(np.sort(values)[:count]))


def min_k_percent_scores(texts_logprobs: Sequence[ArrayLike], k: float = 0.4) -> NDArray[np.float64]:
    """`min_k_percent_score` of each text."""
    return np.array([min_k_percent_score(lp, k) for lp in texts_logprobs], dtype=np.float64)


def auc(positive_scores: ArrayLike, negative_scores: ArrayLike) -> float:
    """P(s_pos > s_neg) + ½ P(s_pos = s_neg): the area under the ROC curve of a detector that calls
    a higher score positive (the Mann-Whitney U statistic over the number of pairs)."""
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auc: both groups need at least one score")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("auc: scores must be finite")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u / (pos.size * neg.size))
