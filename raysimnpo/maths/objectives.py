"""One pure function per loss term (DESIGN §5; paper eqs. 1-5 and appendix A).

Every function takes tensors and returns a tensor; none calls a model. Notation per sequence i of a
batch of N: `nll[i]` = ℓ_i, the summed NLL of the answer targets (log π_θ(y_i|x_i) = −ℓ_i), `n[i]` =
|y_i|, the number of answer targets (see `raysimnpo.maths.logprobs.sequence_nll`). "mean" is over the N
sequences unless a docstring says "token-mean". Reference quantities (`ref_nll`, `ref_logits`,
`ref_hidden`) are detached: the reference model is frozen.

Sign conventions for the gradient weights (eqs. 3 and 5): with π = π_θ(y|x) = exp(−ℓ), the paper writes
∇_θ L = E[w · ∇_θ log π] = −E[w · ∇_θ ℓ], so for the batch mean ∂L/∂ℓ_i = −w_i / N. Minimising L thus
raises ℓ_i (forgets) with per-sequence strength w_i, as GA does with w = 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .logprobs import IGNORE_INDEX


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta: must be > 0; got {beta}")


def ga_loss(nll: Tensor, n: Tensor) -> Tensor:
    """Gradient ascent forget loss: L_f = −(Σ_i ℓ_i) / (Σ_i |y_i|).

    The batch token-mean NLL, negated (paper §3's ℓ_f = log π_θ(y|x), token-averaged as in TOFU's code).
    """
    return -nll.sum() / n.sum()


def retain_nll_loss(nll: Tensor, n: Tensor) -> Tensor:
    """Retain loss of eq. 1: L_r = (Σ_i ℓ_i) / (Σ_i |y_i|), the token-mean NLL of a retain batch."""
    return nll.sum() / n.sum()


def weighted_ga_loss(nll: Tensor, n: Tensor) -> Tensor:
    """Weighted GA (W-GradDiff's forget term, SimNPO at β→0; paper §5 (a), Fig. 4).

    L_f = −mean_i ℓ_i / |y_i|, i.e. ∇L = mean_i (1/|y_i|) ∇ log π_θ(y_i|x_i).
    """
    return -(nll / n).mean()


def npo_loss(nll: Tensor, ref_nll: Tensor, beta: float) -> Tensor:
    """NPO forget loss, paper eq. 2: L = −(2/β) · mean_i log σ(β (ℓ_i − ℓ_ref,i)).

    Eq. 2 writes σ(−β log(π_θ/π_ref)); with log π = −ℓ that is σ(β(ℓ − ℓ_ref)). Bounded below by 0.
    """
    _check_beta(beta)
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll.detach())).mean()


def simnpo_loss(nll: Tensor, n: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """SimNPO forget loss, paper eq. 4: L = −(2/β) · mean_i log σ(β ℓ_i/|y_i| − γ).

    Eq. 4 writes σ(−(β/|y|) log π_θ(y|x) − γ) with the reward margin γ ≥ 0 (paper default 0). The
    official code writes σ(β(ℓ/|y| − δ)); the two agree for δ = γ/β, so a δ from that code converts to
    γ = β·δ here.
    """
    _check_beta(beta)
    if gamma < 0:
        raise ValueError(f"gamma: must be >= 0; got {gamma}")
    return -(2.0 / beta) * F.logsigmoid(beta * nll / n - gamma).mean()


def idk_dpo_loss(
    forget_nll: Tensor, forget_ref_nll: Tensor, idk_nll: Tensor, idk_ref_nll: Tensor, beta: float
) -> Tensor:
    """IdkDPO (TOFU's "dpo" baseline): DPO with the refusal as the preferred and the forget answer as the
    dispreferred response, scaled like eqs. 2/4.

    L = −(2/β) · mean_i log σ(β[(ℓ_θ(y_i) − ℓ_ref(y_i)) − (ℓ_θ(idk_i) − ℓ_ref(idk_i))]),
    i.e. DPO's log σ(β[log π_θ/π_ref(idk) − log π_θ/π_ref(y)]). Minimising it raises ℓ_θ(y) (the forget
    answer's likelihood falls) and lowers ℓ_θ(idk) (the refusal's rises). With the idk term held at its
    reference value it equals `npo_loss` (NPO is DPO without the preferred response).
    """
    _check_beta(beta)
    margin = (forget_nll - forget_ref_nll.detach()) - (idk_nll - idk_ref_nll.detach())
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def token_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """Σ_i sums_i / Σ_i counts_i: a token-level mean over a batch from per-sequence sums and counts.

    Per-sequence sums concatenate over data-parallel ranks, so the mean of the gathered global batch
    is exactly the single-process one (eq. 1's retain NLL, GradDiff's KL, RMU's MSEs)."""
    return sums.sum() / counts.sum()


def sequence_kl(logits: Tensor, ref_logits: Tensor, labels: Tensor) -> Tensor:
    """Per sequence, Σ over its answer targets of KL(π_ref ‖ π_θ) of the next-token distributions, [B].

    Σ_v π_ref(v) (log π_ref(v) − log π_θ(v)) at every position t whose next label is a target (same
    causal shift as `logprobs.token_logprobs`); computed in float32 or wider. Divided by the number
    of targets (`token_mean` with |y_i|) it is GradDiff's KL retain term (`retain_kl_loss`).
    """
    if logits.shape != ref_logits.shape or logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits and ref_logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)}, "
            f"{tuple(ref_logits.shape)}, {tuple(labels.shape)}"
        )
    mask = labels[:, 1:] != IGNORE_INDEX
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits[:, :-1].to(dtype), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.detach()[:, :-1].to(dtype), dim=-1)
    per_position = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)
    return (per_position * mask.to(dtype)).sum(dim=-1)


def retain_kl_loss(logits: Tensor, ref_logits: Tensor, labels: Tensor) -> Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions, token-mean over the retain answer targets.

    GradDiff's KL variant of L_retain (DESIGN §5): `sequence_kl` summed over the batch and divided by
    the number of target positions of the batch.
    """
    per_sequence = sequence_kl(logits, ref_logits, labels)
    return token_mean(per_sequence, (labels[:, 1:] != IGNORE_INDEX).sum(dim=-1).to(per_sequence.dtype))


def sequence_squared_error(hidden: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence, Σ over its masked positions of mean_h (hidden − target)², and the number of
    masked positions: ([B], [B]). `token_mean` of the two is RMU's MSE over masked positions."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and mask [B, T]; got {tuple(hidden.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    weights = mask.to(dtype)
    per_position = (hidden.to(dtype) - target.detach().to(dtype)).pow(2).mean(dim=-1)
    return (per_position * weights).sum(dim=-1), weights.sum(dim=-1)


def _masked_mse(hidden: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return token_mean(*sequence_squared_error(hidden, target, mask))


def rmu_forget_loss(hidden: Tensor, control: Tensor, mask: Tensor) -> Tensor:
    """RMU forget term (Li et al. 2024, WMDP): MSE between the layer-k hidden states and the control
    vector c·u, over the masked (answer-token) positions.

    `hidden` [B, T, H], `control` [H] (already scaled by the steering coefficient), `mask` [B, T].
    The MSE is the mean over masked positions and the H features, as `F.mse_loss` in the RMU code.
    """
    if control.shape != hidden.shape[-1:]:
        raise ValueError(f"control must be [H] = [{hidden.shape[-1]}]; got {tuple(control.shape)}")
    return _masked_mse(hidden, control.detach().expand_as(hidden), mask)


def rmu_retain_loss(hidden: Tensor, ref_hidden: Tensor, mask: Tensor) -> Tensor:
    """RMU retain term: MSE between the layer-k hidden states and the frozen Original's, over masked
    positions (mean over positions and features)."""
    if ref_hidden.shape != hidden.shape:
        raise ValueError(f"ref_hidden must match hidden {tuple(hidden.shape)}; got {tuple(ref_hidden.shape)}")
    return _masked_mse(hidden, ref_hidden.detach(), mask)


def task_vector(
    original: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Task-vector negation (Ilharco et al. 2023; MUSE's baseline): θ_o − α(θ_ft − θ_o) per tensor.

    θ_ft is the Original fine-tuned further on the forget set. Floating tensors are combined in float32
    (or wider) and cast back to the original dtype; non-floating tensors (buffers) are copied from θ_o.
    """
    missing = sorted(set(original) - set(finetuned))
    extra = sorted(set(finetuned) - set(original))
    if missing or extra:
        raise ValueError(f"task_vector: state dicts differ; missing in finetuned {missing}, extra {extra}")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, theta_o in original.items():
            theta_ft = finetuned[name]
            if theta_ft.shape != theta_o.shape:
                raise ValueError(
                    f"task_vector: {name}: shape {tuple(theta_ft.shape)} != {tuple(theta_o.shape)}"
                )
            if not theta_o.is_floating_point():
                out[name] = theta_o.clone()
                continue
            dtype = torch.promote_types(theta_o.dtype, torch.float32)
            o, ft = theta_o.to(dtype), theta_ft.to(dtype)
            out[name] = (o - alpha * (ft - o)).to(theta_o.dtype)
    return out


def npo_weight(nll: Tensor, ref_nll: Tensor, beta: float) -> Tensor:
    """NPO's adaptive gradient weight, paper eq. 3: w = 2π_θ^β / (π_θ^β + π_ref^β), π = exp(−ℓ).

    Computed stably as 2σ(β(ℓ_ref − ℓ)) (divide through by π_θ^β). ∂npo_loss/∂ℓ_i = −w_i/N.
    """
    _check_beta(beta)
    return 2.0 * torch.sigmoid(beta * (ref_nll - nll))


def simnpo_weight(nll: Tensor, n: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """SimNPO's gradient weight, paper eq. 5: w' = (2π_θ^{β/|y|} / (1 + π_θ^{β/|y|})) · 1/|y|, π = exp(−ℓ).

    Computed stably as 2σ(−βℓ/|y| + γ)/|y|; γ = 0 is eq. 5, γ > 0 is appendix A's eq. A4.
    ∂simnpo_loss/∂ℓ_i = −w'_i/N.
    """
    _check_beta(beta)
    return 2.0 * torch.sigmoid(gamma - beta * nll / n) / n
