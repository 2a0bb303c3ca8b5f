"""raysimnpo.maths.objectives: hand-computed losses, autograd vs the closed-form weights of eqs. 3 and 5,
and the β→0 limits of paper §5 (a)."""

import math
from collections.abc import Callable

import pytest
import torch

from raysimnpo.maths import objectives as obj
from raysimnpo.maths.logprobs import IGNORE_INDEX, sequence_nll

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------- hand values


def test_token_mean_losses() -> None:
    # ℓ = (2, 6), |y| = (1, 3): token mean Σℓ/Σ|y| = 8/4 = 2; GA is its negation.
    nll, n = t(2.0, 6.0), t(1.0, 3.0)
    assert obj.retain_nll_loss(nll, n).item() == pytest.approx(2.0)
    assert obj.ga_loss(nll, n).item() == pytest.approx(-2.0)
    # W-GradDiff, ℓ = (3, 6): −mean(ℓ/|y|) = −(3/1 + 6/3)/2 = −2.5, whereas GA gives −(3 + 6)/4 = −2.25.
    assert obj.weighted_ga_loss(t(3.0, 6.0), n).item() == pytest.approx(-2.5)
    assert obj.ga_loss(t(3.0, 6.0), n).item() == pytest.approx(-2.25)


def test_npo_hand_value() -> None:
    # ℓ = 2, ℓ_ref = 1, β = 0.5: argument β(ℓ − ℓ_ref) = 0.5;
    # log σ(0.5) = −log(1 + e^−0.5) = −log(1.6065307) = −0.4740770;  L = −(2/0.5)·(−0.4740770) = 1.8963079.
    assert obj.npo_loss(t(2.0), t(1.0), 0.5).item() == pytest.approx(1.8963079367, abs=1e-9)
    # Eq. 3: π^β = e^−1, π_ref^β = e^−0.5: w = 2e^−1/(e^−1 + e^−0.5) = 0.7357589/0.9744101 = 0.7550813.
    assert obj.npo_weight(t(2.0), t(1.0), 0.5).item() == pytest.approx(0.7550813376, abs=1e-9)
    # Two sequences: the mean of the per-sequence losses; the second has ℓ = ℓ_ref, so log σ(0) = −log 2
    # and its term is (2/0.5)·log 2 = 2.7725887; mean = (1.8963079 + 2.7725887)/2 = 2.3344483.
    assert obj.npo_loss(t(2.0, 1.0), t(1.0, 1.0), 0.5).item() == pytest.approx(2.3344483, abs=1e-6)


def test_simnpo_hand_value_and_official_delta() -> None:
    # ℓ = 6, |y| = 3, β = 1, γ = 0: β ℓ/|y| = 2; log σ(2) = −log(1 + e^−2) = −0.1269280; L = 2·0.1269280 = 0.2538560.
    assert obj.simnpo_loss(t(6.0), t(3.0), 1.0).item() == pytest.approx(0.2538560221, abs=1e-9)
    # γ = 0.5: argument 2 − 0.5 = 1.5; −2·log σ(1.5) = 2·log(1 + e^−1.5) = 0.4028266.
    assert obj.simnpo_loss(t(6.0), t(3.0), 1.0, gamma=0.5).item() == pytest.approx(0.4028265560, abs=1e-9)
    # Official code: −(2/β) log σ(β(ℓ/|y| − δ)) with δ = γ/β. β = 2.5, γ = 0.5 -> δ = 0.2.
    nll, n, beta, gamma = t(6.0, 2.0, 9.0), t(3.0, 4.0, 2.0), 2.5, 0.5
    delta = gamma / beta
    official = -(2 / beta) * torch.nn.functional.logsigmoid(beta * (nll / n - delta)).mean()
    torch.testing.assert_close(obj.simnpo_loss(nll, n, beta, gamma), official)
    # Eq. 5 at ℓ = 6, |y| = 3, β = 1: π^{β/|y|} = e^−2; w' = 2e^−2/(1 + e^−2)/3 = 2·0.1192029/3 = 0.0794686.
    assert obj.simnpo_weight(t(6.0), t(3.0), 1.0).item() == pytest.approx(0.0794686147, abs=1e-9)


def test_losses_are_bounded_below_by_zero_and_stable() -> None:
    # Huge ℓ (already forgotten): log σ(large) -> 0, no overflow; tiny ℓ: finite.
    big, small = t(1e4), t(1e-8)
    assert 0.0 <= obj.npo_loss(big, t(1.0), 0.1).item() < 1e-12
    assert 0.0 <= obj.simnpo_loss(big, t(1.0), 2.5).item() < 1e-12
    assert math.isfinite(obj.npo_loss(small, t(1e4), 0.1).item())
    assert torch.isfinite(obj.npo_weight(t(0.0), t(1e6), 1.0)).all()


def test_idk_dpo() -> None:
    # Forget answer: ℓ_θ = 3, ℓ_ref = 2 (rose by 1). Refusal: ℓ_θ = 1, ℓ_ref = 2 (fell by 1). β = 1:
    # margin = (3 − 2) − (1 − 2) = 2; L = −2 log σ(2) = 0.2538560 (same number as the SimNPO case above).
    assert obj.idk_dpo_loss(t(3.0), t(2.0), t(1.0), t(2.0), 1.0).item() == pytest.approx(
        0.2538560221, abs=1e-9
    )
    # With the refusal at its reference value the loss is NPO's.
    f, f_ref, beta = t(2.0, 5.0), t(1.0, 6.0), 0.5
    torch.testing.assert_close(
        obj.idk_dpo_loss(f, f_ref, t(4.0, 4.0), t(4.0, 4.0), beta), obj.npo_loss(f, f_ref, beta)
    )
    # Gradient direction: minimising raises ℓ_θ(forget) and lowers ℓ_θ(idk).
    forget, idk = t(3.0).requires_grad_(), t(1.0).requires_grad_()
    obj.idk_dpo_loss(forget, t(2.0), idk, t(2.0), 1.0).backward()
    assert forget.grad is not None and idk.grad is not None
    assert forget.grad.item() < 0 < idk.grad.item()


def test_retain_kl_hand_value() -> None:
    # Vocab {0, 1}. Position 0 (target at labels[:, 1]): π_ref = (1/2, 1/2), π_θ = (3/4, 1/4):
    # KL = ½ln(½/¾) + ½ln(½/¼) = ½ln(4/3) = 0.1438410. Position 1 (target): identical -> 0.
    # Position 2 predicts no target and differs wildly; it must be ignored. Token mean = 0.1438410/2.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[ln3, 0.0], [1.0, 2.0], [30.0, -30.0]]], dtype=F64)
    ref_logits = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [-30.0, 30.0]]], dtype=F64)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    value = obj.retain_kl_loss(logits, ref_logits, labels).item()
    assert value == pytest.approx(0.5 * math.log(4 / 3) / 2, abs=1e-12)
    assert obj.retain_kl_loss(ref_logits, ref_logits, labels).item() == pytest.approx(0.0, abs=1e-12)


def test_rmu_losses_over_masked_positions() -> None:
    # hidden[0,0] = (3, 4), control = (1, 0): squared error (4, 16), mean over H = 10. Position 1 masked out.
    hidden = torch.tensor([[[3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[True, False]])
    assert obj.rmu_forget_loss(hidden, torch.tensor([1.0, 0.0]), mask).item() == pytest.approx(10.0)
    # Retain: ref (3, 2) at position 0 -> errors (0, 4) -> mean 2; two masked positions with (0,0) at the
    # second -> (2 + 0)/2 = 1.
    hidden2 = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    ref = torch.tensor([[[3.0, 2.0], [1.0, 1.0]]])
    assert obj.rmu_retain_loss(hidden2, ref, torch.tensor([[1, 1]])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="control"):
        obj.rmu_forget_loss(hidden, torch.zeros(3), mask)


def test_task_vector() -> None:
    # θ_o − α(θ_ft − θ_o) with α = 0.5: 1 − 0.5·(2 − 1) = 0.5; 2 − 0.5·(0 − 2) = 3.
    original = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor([7])}
    finetuned = {"w": torch.tensor([2.0, 0.0]), "steps": torch.tensor([9])}
    out = obj.task_vector(original, finetuned, 0.5)
    assert out["w"].tolist() == [0.5, 3.0] and out["steps"].tolist() == [7]
    bf16 = obj.task_vector({"w": original["w"].bfloat16()}, {"w": finetuned["w"].bfloat16()}, 0.5)
    assert bf16["w"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"missing in finetuned \['b'\]"):
        obj.task_vector({**original, "b": torch.zeros(1)}, finetuned, 1.0)


def test_beta_and_gamma_validation() -> None:
    with pytest.raises(ValueError, match="beta: must be > 0"):
        obj.npo_loss(t(1.0), t(1.0), 0.0)
    with pytest.raises(ValueError, match="beta: must be > 0"):
        obj.simnpo_loss(t(1.0), t(1.0), -1.0)
    with pytest.raises(ValueError, match="gamma: must be >= 0"):
        obj.simnpo_loss(t(1.0), t(1.0), 1.0, gamma=-0.1)


# ---------------------------------------------------------------- autograd vs eqs. 3 and 5
# The paper: ∇L = mean_i w_i ∇log π_i and log π_i = −ℓ_i, so ∂L/∂ℓ_i = −w_i/N (minimising L raises ℓ).

NLL = (0.3, 2.0, 7.5, 25.0, 60.0)
REF_NLL = (0.5, 1.0, 9.0, 20.0, 61.0)
LENGTHS = (1.0, 4.0, 10.0, 33.0, 80.0)


def _grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], nll: torch.Tensor) -> torch.Tensor:
    x = nll.clone().requires_grad_(True)
    loss_fn(x).backward()
    assert x.grad is not None
    return x.grad


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.5])
def test_npo_autograd_matches_eq3(beta: float) -> None:
    nll, ref = t(*NLL), t(*REF_NLL)
    grad = _grad(lambda x: obj.npo_loss(x, ref, beta), nll)
    torch.testing.assert_close(grad, -obj.npo_weight(nll, ref, beta) / len(NLL), atol=1e-6, rtol=0)
    # and the closed form as the paper writes it, 2π^β/(π^β + π_ref^β) with π = exp(−ℓ)
    pi, pi_ref = torch.exp(-nll), torch.exp(-ref)
    torch.testing.assert_close(obj.npo_weight(nll, ref, beta), 2 * pi**beta / (pi**beta + pi_ref**beta))


@pytest.mark.parametrize(("beta", "gamma"), [(0.5, 0.0), (2.5, 0.0), (4.0, 0.0), (2.5, 0.7)])
def test_simnpo_autograd_matches_eq5(beta: float, gamma: float) -> None:
    nll, n = t(*NLL), t(*LENGTHS)
    grad = _grad(lambda x: obj.simnpo_loss(x, n, beta, gamma), nll)
    expected = -obj.simnpo_weight(nll, n, beta, gamma) / len(NLL)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)
    if gamma == 0.0:  # eq. 5 as written: 2π^{β/|y|}/(1 + π^{β/|y|}) · 1/|y|
        p = torch.exp(-nll) ** (beta / n)
        torch.testing.assert_close(obj.simnpo_weight(nll, n, beta), 2 * p / (1 + p) / n)


def test_simnpo_gradient_through_logits_is_weighted_ga() -> None:
    # End to end: ∂L/∂logits = Σ_i (−w'_i/N) ∂ℓ_i/∂logits, with ℓ from sequence_nll.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor(
        [[-100, -100, 1, 2, 3, 4], [-100, 0, 0, -100, -100, -100], [-100, -100, -100, -100, 2, 1]]
    )
    nll, n = sequence_nll(logits, labels)
    (grad_loss,) = torch.autograd.grad(obj.simnpo_loss(nll, n, 2.5), logits, retain_graph=True)
    weights = (-obj.simnpo_weight(nll, n, 2.5) / 3).detach()
    (grad_weighted,) = torch.autograd.grad((weights * nll).sum(), logits)
    torch.testing.assert_close(grad_loss, grad_weighted, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- β→0 limits (paper §5 (a))


def test_simnpo_tends_to_weighted_ga_as_beta_to_zero() -> None:
    # ∂L/∂ℓ_i = −(2/(N|y_i|)) σ(−βℓ_i/|y_i|) -> −(2/(N|y_i|))·½ = −1/(N|y_i|) = ∂(−mean ℓ/|y|)/∂ℓ_i.
    nll, n = t(*NLL), t(*LENGTHS)
    simnpo = _grad(lambda x: obj.simnpo_loss(x, n, 1e-6), nll)
    wga = _grad(lambda x: obj.weighted_ga_loss(x, n), nll)
    torch.testing.assert_close(wga, -1.0 / (len(NLL) * n))
    torch.testing.assert_close(simnpo, wga, atol=1e-6, rtol=0)
    assert torch.all(simnpo < 0)  # descent raises every ℓ_i


def test_npo_tends_to_sequence_sum_ga_as_beta_to_zero() -> None:
    # ∂L/∂ℓ_i = −(2/N) σ(β(ℓ_ref,i − ℓ_i)) -> −1/N = ∂(−mean_i ℓ_i)/∂ℓ_i (GA on summed, not token-mean, NLL).
    nll, ref = t(*NLL), t(*REF_NLL)
    npo = _grad(lambda x: obj.npo_loss(x, ref, 1e-6), nll)
    ga_sequence_sum = _grad(lambda x: -x.mean(), nll)
    torch.testing.assert_close(ga_sequence_sum, torch.full((len(NLL),), -1.0 / len(NLL), dtype=F64))
    torch.testing.assert_close(npo, ga_sequence_sum, atol=1e-6, rtol=0)
    # whereas NPO at β = 1 is visibly different (the weights of eq. 3 are not all 1)
    assert not torch.allclose(_grad(lambda x: obj.npo_loss(x, ref, 1.0), nll), ga_sequence_sum, atol=1e-3)
