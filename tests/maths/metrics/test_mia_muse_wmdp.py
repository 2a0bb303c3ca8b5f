"""Min-K% Prob, AUC, PrivLeak, KnowMem cut and multiple-choice accuracy, with hand-computed values."""

import math

import numpy as np
import pytest

from raysimnpo.maths.metrics import metric_direction
from raysimnpo.maths.metrics.mia import auc, min_k_percent_score, min_k_percent_scores
from raysimnpo.maths.metrics.muse import (
    PUBLISHED_AUC_RETRAIN,
    cut_answer,
    few_shot_prompt,
    knowmem,
    privleak,
    privleak_auc,
    verbmem,
)
from raysimnpo.maths.metrics.wmdp import choice_accuracy, predicted_choices


def test_min_k_percent_hand_values() -> None:
    # 5 tokens, k = 0.4 -> floor(2.0) = 2 lowest: -3 and -2 -> mean -2.5.
    assert min_k_percent_score([-1.0, -3.0, -0.5, -2.0, -0.1], 0.4) == pytest.approx(-2.5)
    # 4 tokens, k = 0.4 -> floor(1.6) = 1 lowest: -4.
    assert min_k_percent_score([-0.2, -4.0, -1.0, -0.3], 0.4) == pytest.approx(-4.0)
    # 2 tokens, k = 0.4 -> floor(0.8) = 0, raised to 1 token: the minimum.
    assert min_k_percent_score([-0.7, -0.2], 0.4) == pytest.approx(-0.7)
    # k = 1: the plain mean log-prob.
    assert min_k_percent_score([-1.0, -2.0, -3.0], 1.0) == pytest.approx(-2.0)
    np.testing.assert_allclose(min_k_percent_scores([[-1.0, -2.0], [-5.0]], 0.5), [-2.0, -5.0])
    with pytest.raises(ValueError):
        min_k_percent_score([], 0.4)
    with pytest.raises(ValueError):
        min_k_percent_score([-1.0], 0.0)


def test_auc_hand_values() -> None:
    # pos {3, 1}, neg {2, 0}: pairs (3>2) (3>0) (1<2) (1>0) -> 3 wins of 4 = 0.75.
    assert auc([3.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    # A tie counts one half: pos {1}, neg {1, 0} -> (0.5 + 1) / 2 = 0.75.
    assert auc([1.0], [1.0, 0.0]) == pytest.approx(0.75)
    assert auc([5.0, 6.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert auc([1.0, 2.0], [5.0, 6.0]) == pytest.approx(0.0)


def test_privleak_auc_and_privleak_hand_values() -> None:
    # Min-50% of each text = its lowest token for 2-3 tokens (floor(1.0) / floor(1.5) = 1).
    forget = [[-0.1, -0.2], [-0.3, -0.1]]  # memorised: scores -0.2, -0.3
    holdout = [[-2.0, -1.0], [-0.25, -3.0, -0.1]]  # unseen: scores -2.0, -3.0
    # Holdout is the positive class; both holdout scores are below both forget scores -> AUC 0.
    assert privleak_auc(forget, holdout, k=0.5) == pytest.approx(0.0)
    # (0 - 0.5) / 0.5 * 100 = -100: an Original that remembers D_f.
    assert privleak(0.0, 0.5) == pytest.approx(-100.0)
    # (0.6 - 0.4772) / 0.4772 * 100 = 25.733...
    assert privleak(0.6, PUBLISHED_AUC_RETRAIN["news"]) == pytest.approx(0.1228 / 0.4772 * 100)
    assert privleak(0.5393, PUBLISHED_AUC_RETRAIN["books"]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        privleak(0.5, 0.0)


def test_knowmem_cut_and_prompt() -> None:
    assert cut_answer(" Mira Talvik\n\nQuestion: who else?") == "Mira Talvik"
    assert cut_answer(" 42 million crowns Question: next") == "42 million crowns"
    assert few_shot_prompt([("q1", "a1")], "q2") == "Question: q1\nAnswer: a1\n\nQuestion: q2\nAnswer:"
    # "mira talvik" vs "mira talvik said": LCS 2, P = 2/2, R = 2/3 -> F1 = 0.8; second is exact -> 1.
    assert knowmem(
        [" Mira Talvik\n\nQuestion: x", "in 2027"], ["Mira Talvik said", "in 2027"]
    ) == pytest.approx((0.8 + 1.0) / 2)
    # verbmem: "the cat sat" vs "the cat sat on the mat" -> F1 2/3; exact -> 1.
    assert verbmem(["the cat sat", "a b"], ["the cat sat on the mat", "a b"]) == pytest.approx(
        (2 / 3 + 1) / 2
    )


def test_choice_accuracy_hand_values() -> None:
    loglik = [
        [-1.0, -2.0, -3.0, -4.0],  # predicts 0, gold 0 -> right
        [-5.0, -0.5, -0.7, -9.0],  # predicts 1, gold 2 -> wrong
        [-2.0, -2.0, -1.0, -1.0],  # tie between 2 and 3 -> the first (2), gold 2 -> right
    ]
    np.testing.assert_array_equal(predicted_choices(loglik), [0, 1, 2])
    assert choice_accuracy(loglik, [0, 2, 2]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        choice_accuracy(loglik, [0, 1])
    with pytest.raises(ValueError):
        predicted_choices([1.0, 2.0])


def test_directions() -> None:
    assert metric_direction("privleak") == "zero"
    assert metric_direction("privleak_abs") == "min"
    assert metric_direction("wmdp_forget") == "max"
    assert metric_direction("knowmem_retain") == "max"
    assert not math.isnan(PUBLISHED_AUC_RETRAIN["news"])
