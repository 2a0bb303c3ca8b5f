"""TOFU metrics (Maini et al. 2024; DESIGN §6) from per-example summed NLLs and target counts.

Inputs are the quantities of `raysimnpo.maths.logprobs.sequence_nll`: ℓ (summed NLL of an answer's target
tokens) and |y| (their number). The per-sequence normalised probability is P̃ = exp(−ℓ/|y|).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from scipy.special import logsumexp

MODEL_UTILITY_KEYS: tuple[str, ...] = tuple(
    f"{split}_{stat}"
    for split in ("retain", "real_authors", "world_facts")
    for stat in ("prob", "rouge", "truth_ratio")
)


def _log_normalized_prob(nll: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    nll_array, n_array = np.asarray(nll, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if nll_array.shape != n_array.shape:
        raise ValueError(f"nll and n must have the same shape; got {nll_array.shape} and {n_array.shape}")
    if np.any(n_array <= 0):
        raise ValueError("n: every sequence needs at least one target token")
    return -nll_array / n_array


def normalized_prob(nll: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """P̃ = exp(−ℓ/|y|), the length-normalised sequence probability (TOFU's Prob), elementwise."""
    return np.exp(_log_normalized_prob(nll, n))


def answer_prob(nll: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """Per-example P̃(answer) on forget/retain splits; TOFU's Prob there is its mean. Inputs are [N]."""
    if np.ndim(nll) != 1:
        raise ValueError(f"nll must be 1-D [N]; got shape {np.shape(nll)}")
    return normalized_prob(nll, n)


def choice_prob(
    answer_nll: ArrayLike, answer_n: ArrayLike, perturbed_nll: ArrayLike, perturbed_n: ArrayLike
) -> NDArray[np.float64]:
    """Per-example P̃(answer) / (P̃(answer) + Σ_j P̃(perturbed_j)): TOFU's Prob on real_authors/world_facts.

    `answer_*` are [N], `perturbed_*` are [N, m]. Computed as a softmax over the log P̃ values.
    """
    log_answer = _log_normalized_prob(answer_nll, answer_n)
    log_perturbed = _log_normalized_prob(perturbed_nll, perturbed_n)
    if log_answer.ndim != 1 or log_perturbed.ndim != 2 or log_perturbed.shape[0] != log_answer.shape[0]:
        raise ValueError(
            f"need answer [N] and perturbed [N, m]; got {log_answer.shape} and {log_perturbed.shape}"
        )
    log_all = np.concatenate([log_answer[:, None], log_perturbed], axis=1)
    return np.exp(log_answer - logsumexp(log_all, axis=1))


def truth_ratio(
    perturbed_nll: ArrayLike, perturbed_n: ArrayLike, reference_nll: ArrayLike, reference_n: ArrayLike
) -> NDArray[np.float64]:
    """Per-example truth ratio R = (Π_j P̃(perturbed_j))^(1/m) / P̃(reference).

    `perturbed_*` are [N, m]; the reference is the paraphrased answer on forget/retain and the answer
    on real_authors/world_facts ([N]). TOFU's code stores 1/R; the scores below and the KS test of
    `forget_quality` give the same numbers either way.
    """
    log_perturbed = _log_normalized_prob(perturbed_nll, perturbed_n)
    log_reference = _log_normalized_prob(reference_nll, reference_n)
    if log_perturbed.ndim != 2 or log_reference.shape != log_perturbed.shape[:1]:
        raise ValueError(
            f"need perturbed [N, m] and reference [N]; got {log_perturbed.shape}, {log_reference.shape}"
        )
    return np.exp(log_perturbed.mean(axis=1) - log_reference)


def _check_ratios(r: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(r, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"truth ratios must be a non-empty 1-D array; got shape {array.shape}")
    if np.any(np.isnan(array)) or np.any(array < 0):
        raise ValueError("truth ratios must be >= 0 and not NaN")
    return array


def forget_truth_score(r: ArrayLike) -> float:
    """TOFU's forget-split Truth Ratio: mean_i min(R_i, 1/R_i) (1 = cannot tell true from perturbed)."""
    array = _check_ratios(r)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(array, 1.0 / array)))


def utility_truth_score(r: ArrayLike) -> float:
    """TOFU's Truth Ratio on retain/real_authors/world_facts: mean_i max(0, 1 − R_i)."""
    return float(np.mean(np.maximum(0.0, 1.0 - _check_ratios(r))))


@dataclass(frozen=True)
class ForgetQuality:
    """TOFU forget quality. `n` is the number of unlearned-model truth ratios; `at_floor` is True when the
    p-value is the smallest possible for the two sample sizes (the samples are completely separated)."""

    pvalue: float
    statistic: float
    n: int
    at_floor: bool


def forget_quality(r_unlearned: ArrayLike, r_retrain: ArrayLike) -> ForgetQuality:
    """TOFU forget quality: scipy.stats.ks_2samp(R_unlearned, R_retrain).pvalue on the forget split.

    The floor is the p-value of two fully separated samples of the same sizes (KS statistic 1); a
    result at the floor means "completely distinguishable", however far apart the samples are.
    """
    unlearned, retrain = _check_ratios(r_unlearned), _check_ratios(r_retrain)
    result = stats.ks_2samp(unlearned, retrain)
    n1, n2 = unlearned.size, retrain.size
    floor = stats.ks_2samp(np.arange(n1, dtype=np.float64), np.arange(n2, dtype=np.float64) + n1).pvalue
    pvalue = float(result.pvalue)
    return ForgetQuality(
        pvalue=pvalue,
        statistic=float(result.statistic),
        n=int(n1),
        at_floor=bool(pvalue <= floor * (1 + 1e-9)),
    )


def model_utility(values: Mapping[str, float]) -> float:
    """TOFU model utility: scipy.stats.hmean of exactly the 9 numbers {prob, rouge, truth_ratio} x
    {retain, real_authors, world_facts}, keyed `<split>_<stat>` (`MODEL_UTILITY_KEYS`). A zero gives 0."""
    missing = [k for k in MODEL_UTILITY_KEYS if k not in values]
    extra = sorted(k for k in values if k not in MODEL_UTILITY_KEYS)
    if missing or extra:
        raise ValueError(
            f"model_utility: missing keys {missing}, unexpected keys {extra}; need {list(MODEL_UTILITY_KEYS)}"
        )
    numbers = np.array([float(values[k]) for k in MODEL_UTILITY_KEYS])
    bad = [k for k, v in zip(MODEL_UTILITY_KEYS, numbers, strict=True) if not (np.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"model_utility: {bad} must be finite and >= 0")
    return float(stats.hmean(numbers))
