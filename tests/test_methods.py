"""raysimnpo.methods.gradient_weights: the closed forms of eq. 3 (NPO) and eq. 5 / A4 (SimNPO) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from raysimnpo.methods import (
    CLOSED_FORM_WEIGHTS,
    GAParams,
    NPOParams,
    SimNPOParams,
    StepTerms,
    gradient_weights,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_terms() -> StepTerms:
    # ℓ = (2, 6), |y| = (4, 3), ℓ_ref = (2, 4); ℓ needs a gradient, as in the training loop.
    return StepTerms(
        forget_nll=torch.tensor([2.0, 6.0], requires_grad=True),
        forget_tokens=torch.tensor([4.0, 3.0]),
        forget_ref_nll=torch.tensor([2.0, 4.0]),
    )


def test_npo_weight_is_eq_3() -> None:
    # w = 2σ(β(ℓ_ref − ℓ)), β = 0.5: (2σ(0), 2σ(−1)) = (1, 2/(1 + e)).
    w = gradient_weights(NPOParams(beta=0.5), hand_terms())
    assert w is not None and not w.requires_grad
    assert w.tolist() == pytest.approx([1.0, 2.0 / (1.0 + math.e)], abs=1e-6)
    assert 2.0 / (1.0 + math.e) == pytest.approx(0.5378828, abs=1e-7)


def test_simnpo_weight_is_eq_5_and_a4() -> None:
    # γ = 0: w' = 2σ(−βℓ/|y|)/|y|, β = 2: (2σ(−1)/4, 2σ(−4)/3) = (0.1344707, 0.0119908).
    w = gradient_weights(SimNPOParams(beta=2.0, gamma=0.0), hand_terms())
    assert w is not None and not w.requires_grad
    assert w.tolist() == pytest.approx([0.1344707, 0.0119908], abs=1e-6)
    assert w.tolist() == pytest.approx([2 * sigmoid(-1) / 4, 2 * sigmoid(-4) / 3], abs=1e-7)
    # γ = 1 (eq. A4): 2σ(1 − βℓ/|y|)/|y| = (2σ(0)/4, 2σ(−3)/3) = (0.25, 0.0316173).
    w = gradient_weights(SimNPOParams(beta=2.0, gamma=1.0), hand_terms())
    assert w is not None
    assert w.tolist() == pytest.approx([0.25, 0.0316173], abs=1e-6)


def test_methods_without_closed_form_give_none() -> None:
    assert gradient_weights(GAParams(), hand_terms()) is None
    assert sorted(CLOSED_FORM_WEIGHTS) == ["npo", "simnpo"]
