"""raysimnpo.maths.metrics.tofu on hand-computed examples, and the metric-direction table."""

import math

import numpy as np
import pytest

from raysimnpo.maths.metrics import METRICS, metric_direction
from raysimnpo.maths.metrics.tofu import (
    MODEL_UTILITY_KEYS,
    answer_prob,
    choice_prob,
    forget_quality,
    forget_truth_score,
    model_utility,
    normalized_prob,
    truth_ratio,
    utility_truth_score,
)

E = math.e


def test_normalized_and_answer_prob() -> None:
    # ℓ = 4, |y| = 2 -> exp(−2); ℓ = 3, |y| = 3 -> exp(−1).
    np.testing.assert_allclose(normalized_prob([4.0, 3.0], [2, 3]), [E**-2, E**-1])
    np.testing.assert_allclose(answer_prob(np.array([4.0, 3.0]), np.array([2, 3])), [E**-2, E**-1])
    with pytest.raises(ValueError, match="at least one target token"):
        normalized_prob([1.0], [0])
    with pytest.raises(ValueError, match="1-D"):
        answer_prob([[1.0]], [[1.0]])


def test_choice_prob_hand_value() -> None:
    # P̃(answer) = exp(−2/2) = e^−1; perturbed P̃ = e^−1, e^−2:
    # e^−1 / (e^−1 + e^−1 + e^−2) = 1/(2 + e^−1) = 1/2.3678794 = 0.4223188.
    value = choice_prob([2.0], [2.0], [[2.0, 4.0]], [[2.0, 2.0]])
    np.testing.assert_allclose(value, [0.4223187983], atol=1e-10)
    # Very long answers (ℓ ~ 1e4 nats/token) underflow exp(−ℓ/|y|) but not the softmax in log space.
    np.testing.assert_allclose(choice_prob([1e4], [1], [[1e4, 1e4]], [[1, 1]]), [1 / 3])


def test_truth_ratio_and_scores_hand_values() -> None:
    # Example 0: perturbed P̃ = exp(−2/1), exp(−4/2) = e^−2, e^−2 -> geometric mean e^−2; reference
    #            P̃ = exp(−3/3) = e^−1 -> R = e^−2/e^−1 = e^−1 = 0.3679.
    # Example 1: perturbed e^−1, e^−1; reference exp(−4/2) = e^−2 -> R = e^−1/e^−2 = e = 2.7183.
    r = truth_ratio([[2.0, 4.0], [1.0, 1.0]], [[1, 2], [1, 1]], [3.0, 4.0], [3, 2])
    np.testing.assert_allclose(r, [E**-1, E])
    # Forget score: mean(min(R, 1/R)) = mean(e^−1, e^−1) = 0.3679.
    assert forget_truth_score(r) == pytest.approx(E**-1)
    # Utility score: mean(max(0, 1 − R)) = mean(1 − e^−1, 0) = 0.6321/2 = 0.3161.
    assert utility_truth_score(r) == pytest.approx((1 - E**-1) / 2)
    # Geometric (not arithmetic) mean over perturbations: P̃ = e^−1 and e^−3, reference e^−2 -> R = 1.
    np.testing.assert_allclose(truth_ratio([[1.0, 3.0]], [[1, 1]], [2.0], [1]), [1.0])
    assert forget_truth_score([0.0]) == 0.0
    with pytest.raises(ValueError, match="perturbed"):
        truth_ratio([1.0, 2.0], [1, 1], [1.0, 2.0], [1, 1])


def test_forget_quality_identical_samples() -> None:
    r = np.array([0.2, 0.5, 0.9, 1.3, 0.7, 0.4])
    fq = forget_quality(r, r.copy())
    assert fq.pvalue == 1.0 and fq.statistic == 0.0 and fq.n == 6 and not fq.at_floor


def test_forget_quality_separated_samples_hit_the_floor() -> None:
    # n1 = n2 = 5, fully separated: exact two-sided p = 2 / C(10, 5) = 2/252 = 0.0079365.
    fq = forget_quality([0.1, 0.2, 0.3, 0.4, 0.5], [2.0, 3.0, 4.0, 5.0, 6.0])
    assert fq.statistic == 1.0 and fq.n == 5 and fq.at_floor
    assert fq.pvalue == pytest.approx(2 / 252, rel=1e-9)
    # Far apart or barely apart, the p-value is the same floor: the flag says so.
    assert forget_quality([0.1, 0.2, 0.3, 0.4, 0.5], [0.51, 0.52, 0.53, 0.54, 0.55]).pvalue == fq.pvalue
    # One overlapping value lifts it off the floor (D = 4/5).
    partly = forget_quality([0.1, 0.2, 0.3, 0.4, 5.5], [2.0, 3.0, 4.0, 5.0, 6.0])
    assert partly.statistic == pytest.approx(0.8) and not partly.at_floor and partly.pvalue > fq.pvalue


def test_forget_quality_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        forget_quality([0.1, float("nan")], [0.2, 0.3])


def test_model_utility_hmean() -> None:
    # Eight 0.5s and one 0.25: 9 / (8·2 + 4) = 9/20 = 0.45.
    values = dict.fromkeys(MODEL_UTILITY_KEYS, 0.5) | {"world_facts_truth_ratio": 0.25}
    assert model_utility(values) == pytest.approx(0.45)
    assert model_utility(values | {"retain_rouge": 0.0}) == 0.0


def test_model_utility_key_errors_name_the_key() -> None:
    values = dict.fromkeys(MODEL_UTILITY_KEYS, 0.5)
    missing = {k: v for k, v in values.items() if k != "real_authors_prob"}
    with pytest.raises(ValueError, match=r"missing keys \['real_authors_prob'\]"):
        model_utility(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['forget_prob'\]"):
        model_utility(values | {"forget_prob": 0.1})
    with pytest.raises(ValueError, match="retain_prob"):
        model_utility(values | {"retain_prob": -0.1})


def test_metric_directions() -> None:
    assert metric_direction("forget_quality") == "max"
    assert metric_direction("model_utility") == "max"
    assert metric_direction("forget_prob") == "min"
    assert metric_direction("forget_rouge") == "min"
    assert metric_direction("retain_prob") == "max"
    assert metric_direction("privleak") == "zero"
    assert set(MODEL_UTILITY_KEYS) <= set(METRICS)
    with pytest.raises(ValueError, match="unknown"):
        metric_direction("accuracy")
