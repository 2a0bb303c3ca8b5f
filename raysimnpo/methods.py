"""Unlearning methods, keyed by stable names: a hyperparameter model and a loss each.

Every method plugs into the paper's eq. 1, L = L_forget + λ · L_retain. A loss receives the
`StepTerms` the training loop has already computed (per-sequence NLLs, cached reference NLLs,
hidden states) and never calls a model; it returns the forget term and the retain term, and the
loop adds them with the method's λ (`retain_weight`). `needs` tells the loop what to compute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from torch import Tensor

    from . import objectives
else:

    class _Objectives:
        """`objectives` (torch) imported by the first loss computed, not when a config names a method:
        validating a sweep file must not cost torch's import. A plain object, not a lazy entry in
        sys.modules, so that nothing scanning sys.modules (inspect, pickle) triggers the import."""

        def __getattr__(self, name: str) -> object:
            from . import objectives

            return getattr(objectives, name)

    objectives = _Objectives()


Need = Literal["reference_nll", "idk", "frozen_model", "hidden_states"]


class MethodParams(BaseModel):
    """Hyperparameters shared by all methods; subclasses add β, γ, ..."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # finite floats only
    name: str


class GAParams(MethodParams):
    name: Literal["ga"] = "ga"


class GradDiffParams(MethodParams):
    name: Literal["grad_diff"] = "grad_diff"
    retain_weight: float = Field(1.0, ge=0, description="λ of eq. 1")
    retain_loss: Literal["nll", "kl"] = "nll"


class NPOParams(MethodParams):
    name: Literal["npo"] = "npo"
    beta: float = Field(0.1, gt=0, description="β of eq. 2 (paper range [0.05, 0.2])")
    retain_weight: float = Field(1.0, ge=0, description="λ of eq. 1 (paper range [0.5, 1.5])")


class SimNPOParams(MethodParams):
    name: Literal["simnpo"] = "simnpo"
    beta: float = Field(2.5, gt=0, description="β of eq. 4 (paper range [1.5, 3.5] forget05)")
    gamma: float = Field(0.0, ge=0, description="γ of eq. 4; the official code's δ is γ/β")
    retain_weight: float = Field(0.1, ge=0, description="λ of eq. 1 (paper range [0.05, 0.25])")


class WGradDiffParams(MethodParams):
    name: Literal["w_grad_diff"] = "w_grad_diff"
    retain_weight: float = Field(1.0, ge=0, description="λ of eq. 1")


class IdkNLLParams(MethodParams):
    name: Literal["idk_nll"] = "idk_nll"
    retain_weight: float = Field(1.0, ge=0, description="λ of eq. 1")


class IdkDPOParams(MethodParams):
    name: Literal["idk_dpo"] = "idk_dpo"
    beta: float = Field(0.1, gt=0, description="β of the DPO loss")
    retain_weight: float = Field(1.0, ge=0, description="λ of eq. 1")


class RMUParams(MethodParams):
    name: Literal["rmu"] = "rmu"
    layer: int | None = Field(None, ge=0, description="decoder layer k; None = the middle layer")
    steering_coeff: float = Field(6.5, gt=0, description="c: forget activations are pushed to c·u")
    retain_weight: float = Field(100.0, ge=0, description="α of RMU's retain MSE (λ of eq. 1)")
    trainable_layers: int = Field(3, ge=1, description="train the MLPs of layers k-n+1..k")


class TaskVectorParams(MethodParams):
    name: Literal["task_vector"] = "task_vector"
    alpha: float = Field(1.0, gt=0, description="θ = θ_o − α(θ_ft − θ_o)")


AnyMethodParams = Annotated[
    GAParams
    | GradDiffParams
    | NPOParams
    | SimNPOParams
    | WGradDiffParams
    | IdkNLLParams
    | IdkDPOParams
    | RMUParams
    | TaskVectorParams,
    Field(discriminator="name"),
]


@dataclass
class StepTerms:
    """What one unlearning step has computed; losses read it, they never run a model."""

    forget_nll: Tensor  # ℓ_i, summed NLL of each forget answer
    forget_tokens: Tensor  # |y_i|
    retain_nll: Tensor | None = None
    retain_tokens: Tensor | None = None
    forget_ref_nll: Tensor | None = None  # ℓ_ref,i from the cached Original pass
    idk_nll: Tensor | None = None  # forget question -> refusal string
    idk_tokens: Tensor | None = None
    idk_ref_nll: Tensor | None = None
    retain_logits: Tensor | None = None
    retain_ref_logits: Tensor | None = None
    retain_labels: Tensor | None = None
    forget_hidden: Tensor | None = None
    forget_mask: Tensor | None = None
    retain_hidden: Tensor | None = None
    retain_ref_hidden: Tensor | None = None
    retain_mask: Tensor | None = None
    control_vector: Tensor | None = None


LossFn = Callable[[StepTerms, MethodParams], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class Method:
    name: str
    params: type[MethodParams]
    loss: LossFn
    needs: frozenset[Need]
    paper: str

    def retain_weight(self, params: MethodParams) -> float:
        return float(getattr(params, "retain_weight", 0.0))


def _retain_nll(t: StepTerms) -> Tensor:
    assert t.retain_nll is not None and t.retain_tokens is not None
    return objectives.retain_nll_loss(t.retain_nll, t.retain_tokens)


def _ga(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    return objectives.ga_loss(t.forget_nll, t.forget_tokens), None


def _grad_diff(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert isinstance(p, GradDiffParams)
    if p.retain_loss == "kl":
        assert t.retain_logits is not None and t.retain_ref_logits is not None and t.retain_labels is not None
        retain = objectives.retain_kl_loss(t.retain_logits, t.retain_ref_logits, t.retain_labels)
    else:
        retain = _retain_nll(t)
    return objectives.ga_loss(t.forget_nll, t.forget_tokens), retain


def _npo(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert isinstance(p, NPOParams) and t.forget_ref_nll is not None
    return objectives.npo_loss(t.forget_nll, t.forget_ref_nll, p.beta), _retain_nll(t)


def _simnpo(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert isinstance(p, SimNPOParams)
    return objectives.simnpo_loss(t.forget_nll, t.forget_tokens, p.beta, p.gamma), _retain_nll(t)


def _w_grad_diff(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    return objectives.weighted_ga_loss(t.forget_nll, t.forget_tokens), _retain_nll(t)


def _idk_nll(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert t.idk_nll is not None and t.idk_tokens is not None
    return objectives.retain_nll_loss(t.idk_nll, t.idk_tokens), _retain_nll(t)


def _idk_dpo(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert isinstance(p, IdkDPOParams)
    assert t.forget_ref_nll is not None and t.idk_nll is not None and t.idk_ref_nll is not None
    forget = objectives.idk_dpo_loss(t.forget_nll, t.forget_ref_nll, t.idk_nll, t.idk_ref_nll, p.beta)
    return forget, _retain_nll(t)


def _rmu(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    assert isinstance(p, RMUParams)
    assert t.forget_hidden is not None and t.forget_mask is not None and t.control_vector is not None
    assert t.retain_hidden is not None and t.retain_ref_hidden is not None and t.retain_mask is not None
    forget = objectives.rmu_forget_loss(t.forget_hidden, p.steering_coeff * t.control_vector, t.forget_mask)
    return forget, objectives.rmu_retain_loss(t.retain_hidden, t.retain_ref_hidden, t.retain_mask)


def _task_vector_finetune(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    # Task Vector first fine-tunes *towards* the forget set (plain NLL descent); the recipe then
    # negates the resulting task vector with `apply_task_vector`.
    return objectives.retain_nll_loss(t.forget_nll, t.forget_tokens), None


METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method("ga", GAParams, _ga, frozenset(), "TOFU (Maini et al., 2024): gradient ascent"),
        Method("grad_diff", GradDiffParams, _grad_diff, frozenset(), "TOFU: gradient difference, eq. 1"),
        Method(
            "npo", NPOParams, _npo, frozenset({"reference_nll"}), "Zhang et al., 2024; SimNPO paper eq. 2"
        ),
        Method("simnpo", SimNPOParams, _simnpo, frozenset(), "SimNPO paper eq. 4"),
        Method("w_grad_diff", WGradDiffParams, _w_grad_diff, frozenset(), "SimNPO paper, eq. 5 as β→0"),
        Method("idk_nll", IdkNLLParams, _idk_nll, frozenset({"idk"}), "TOFU: IDK fine-tuning"),
        Method(
            "idk_dpo",
            IdkDPOParams,
            _idk_dpo,
            frozenset({"idk", "reference_nll"}),
            "TOFU / Zhang et al., 2024: DPO towards refusals",
        ),
        Method(
            "rmu",
            RMUParams,
            _rmu,
            frozenset({"frozen_model", "hidden_states"}),
            "Li et al., 2024 (WMDP): representation misdirection",
        ),
        Method(
            "task_vector", TaskVectorParams, _task_vector_finetune, frozenset(), "Ilharco et al., 2023 (MUSE)"
        ),
    )
}


def needs_of(params: MethodParams) -> frozenset[Need]:
    method = METHODS[params.name]
    if isinstance(params, GradDiffParams) and params.retain_loss == "kl":
        return method.needs | {"frozen_model"}
    return method.needs


# Methods whose forget gradient is a per-sequence weight times GA's (`gradient_weights` is not None).
CLOSED_FORM_WEIGHTS = frozenset({"npo", "simnpo"})


def gradient_weights(params: MethodParams, terms: StepTerms) -> Tensor | None:
    """Each forget sequence's closed-form gradient weight at the current θ, detached; None for methods
    without one.

    NPO: w = 2π_θ^β / (π_θ^β + π_ref^β) (paper eq. 3, with the cached ℓ_ref); SimNPO:
    w' = 2σ(γ − βℓ/|y|)/|y| (eq. 5; eq. A4 for γ > 0). See `objectives.npo_weight` / `simnpo_weight`.
    """
    nll = terms.forget_nll.detach()
    if isinstance(params, NPOParams):
        assert terms.forget_ref_nll is not None, "NPO's weights need the cached reference NLLs"
        return objectives.npo_weight(nll, terms.forget_ref_nll.detach(), params.beta)
    if isinstance(params, SimNPOParams):
        return objectives.simnpo_weight(nll, terms.forget_tokens.detach(), params.beta, params.gamma)
    return None


def apply_task_vector(
    original: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], params: MethodParams
) -> dict[str, Tensor]:
    """θ = θ_o − α(θ_ft − θ_o) for Task Vector; other methods keep the trained weights."""
    if not isinstance(params, TaskVectorParams):
        return dict(finetuned)
    import torch

    with torch.no_grad():
        return objectives.task_vector(dict(original), dict(finetuned), params.alpha)
