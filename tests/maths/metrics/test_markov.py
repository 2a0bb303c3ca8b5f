"""raysimnpo.maths.metrics.markov: appendix B's chains and the KL metric on hand-computed examples."""

import math

import numpy as np
import pytest

from raysimnpo.maths.metrics import METRICS
from raysimnpo.maths.metrics.markov import (
    designated_chain,
    first_reaching,
    kl_divergence,
    paper_chain,
    sequence_kl,
    true_next_distributions,
)

LOG_UNIFORM = np.log(np.full(10, 0.1))
# KL(π_r ‖ uniform) = 0.8 ln((0.8/3)/0.1) + 0.2 ln((0.2/7)/0.1) = 0.8 ln(8/3) + 0.2 ln(2/7)
#                   = 0.78466340 − 0.25055259 = 0.53411081
KL_RETAIN_ROW_VS_UNIFORM = 0.8 * math.log(8 / 3) + 0.2 * math.log(2 / 7)


def test_paper_chains_match_appendix_b() -> None:
    retain = paper_chain("retain", 0.2)
    np.testing.assert_allclose(retain.initial, [0.8 / 3] * 3 + [0.2 / 7] * 7)
    for i in range(3):  # designated rows are π_r
        np.testing.assert_allclose(retain.transition[i], retain.initial)
    for i in range(3, 10):  # every other row is uniform
        np.testing.assert_allclose(retain.transition[i], np.full(10, 0.1))
    forget2 = paper_chain("forget2")
    np.testing.assert_allclose(forget2.initial[6:9], [0.8 / 3] * 3)
    np.testing.assert_allclose(forget2.initial[[0, 5, 9]], [0.2 / 7] * 3)
    np.testing.assert_allclose(forget2.transition[7], forget2.initial)
    np.testing.assert_allclose(forget2.transition[3], np.full(10, 0.1))
    # State 10 (token 9) is designated by no chain: its row is uniform in all three.
    for name in ("retain", "forget1", "forget2"):
        np.testing.assert_allclose(paper_chain(name).transition[9], np.full(10, 0.1))


def test_chain_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown; allowed: retain, forget1, forget2"):
        paper_chain("forget3")
    with pytest.raises(ValueError, match="distinct tokens"):
        designated_chain([1, 1, 2], 0.2)
    with pytest.raises(ValueError, match="epsilon"):
        designated_chain([0, 1], 1.5)


def test_kl_of_true_rows_is_zero_and_uniform_by_hand() -> None:
    retain = paper_chain("retain")
    assert kl_divergence(retain.initial, np.log(retain.initial)) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(retain.initial, LOG_UNIFORM) == pytest.approx(0.53411081, abs=1e-8)
    # KL(uniform ‖ π_r) = 0.3 ln(0.1/(0.8/3)) + 0.7 ln(0.1/(0.2/7)) = −0.29424878 + 0.87693408
    assert kl_divergence(np.full(10, 0.1), np.log(retain.initial)) == pytest.approx(0.58268530, abs=1e-8)
    # 0·log 0 = 0: a one-hot truth against a uniform model is ln 10.
    assert kl_divergence(np.eye(10)[3], LOG_UNIFORM) == pytest.approx(math.log(10))


def test_sequence_kl_positions_by_hand() -> None:
    retain = paper_chain("retain")
    states = np.array([[0, 5, 1], [7, 8, 9]])
    # A model that outputs the true rows has KL 0 everywhere.
    truth = true_next_distributions(states, retain)
    assert truth.shape == (2, 2, 10)
    np.testing.assert_allclose(truth[0, 0], retain.transition[0])
    np.testing.assert_allclose(truth[0, 1], np.full(10, 0.1))
    np.testing.assert_allclose(sequence_kl(np.log(truth), states, retain), [0.0, 0.0], atol=1e-12)
    # A uniform model over 3 output positions (the last is ignored: nothing follows it).
    uniform = np.broadcast_to(LOG_UNIFORM, (2, 3, 10))
    # Sequence 1: after state 0 the truth is π_r (0.53411), after state 5 it is uniform (0) -> mean 0.26706.
    # Sequence 2: states 7 and 8 are not retain states: uniform rows, KL 0.
    np.testing.assert_allclose(
        sequence_kl(uniform, states, retain), [KL_RETAIN_ROW_VS_UNIFORM / 2, 0.0], atol=1e-12
    )
    # A model with a start token also predicts s_0, whose truth is the initial distribution π_r:
    # (0.53411 + 0.53411 + 0) / 3 and (0.53411 + 0 + 0) / 3.
    np.testing.assert_allclose(
        sequence_kl(uniform, states, retain, predicts_first_state=True),
        [2 * KL_RETAIN_ROW_VS_UNIFORM / 3, KL_RETAIN_ROW_VS_UNIFORM / 3],
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="covers 2 positions; the sequences need 3"):
        sequence_kl(uniform[:, :2], states, retain, predicts_first_state=True)
    with pytest.raises(ValueError, match="tokens in"):
        sequence_kl(uniform, np.array([[0, 10, 1]]), retain)


def test_first_reaching() -> None:
    iterations = [10, 0, 5, 15]  # any order: the first in iteration order counts
    forget = [0.5, 0.1, 0.3, 0.6]
    retain = [0.05, 0.01, 0.02, 0.07]
    assert first_reaching(iterations, forget, retain, target=0.44) == (10, 0.05)
    assert first_reaching(iterations, forget, retain, target=0.1) == (0, 0.01)
    assert first_reaching(iterations, forget, retain, target=0.7) is None


def test_metric_directions() -> None:
    assert METRICS["markov_forget2_kl"].direction == "max"
    assert METRICS["markov_retain_kl"].direction == "min"
