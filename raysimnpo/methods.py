"""Unlearning methods, keyed by stable names: a hyperparameter model and a loss each.

Every method plugs into the paper's eq. 1, L = L_forget + λ · L_retain. A loss receives the
`StepTerms` the training loop has already computed (per-sequence NLLs, cached reference NLLs,
hidden states) and never calls a model; it returns the forget term and the retain term, and the
loop adds them with the method's λ (`retain_weight`). `needs` tells the loop what to compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from .config.base import Frozen

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from .maths import objectives
else:

    class _Objectives:
        """`objectives` (torch) imported by the first loss computed, not when a config names a method:
        validating a sweep file must not cost torch's import. A plain object, not a lazy entry in
        sys.modules, so that nothing scanning sys.modules (inspect, pickle) triggers the import."""

        def __getattr__(self, name: str) -> object:
            from .maths import objectives

            return getattr(objectives, name)

    objectives = _Objectives()


Need = Literal["reference_nll", "idk", "frozen_model", "hidden_states"]


class MethodParams(Frozen):
    """Hyperparameters shared by all methods; subclasses add β, γ, ..."""

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
    """What one unlearning step has computed; losses read it, they never run a model.

    Every field holds one value per sequence of the batch ([B]), so the terms of the ranks' slices
    concatenate into the global batch's (`sharding.gather_step_terms`) and a loss evaluated on them is
    the single-process loss: token-level quantities (GradDiff's KL, RMU's squared errors) are summed
    per sequence here and divided by the summed counts in the loss (DESIGN §5).
    """

    forget_nll: Tensor  # ℓ_i, summed NLL of each forget answer
    forget_tokens: Tensor  # |y_i|
    retain_nll: Tensor | None = None
    retain_tokens: Tensor | None = None
    forget_ref_nll: Tensor | None = None  # ℓ_ref,i from the cached Original pass
    idk_nll: Tensor | None = None  # forget question -> refusal string
    idk_tokens: Tensor | None = None
    idk_ref_nll: Tensor | None = None
    retain_kl: Tensor | None = None  # Σ over the retain answer targets of KL(π_ref ‖ π_θ)
    forget_hidden_se: Tensor | None = None  # Σ over answer positions of mean_h (h − c·u)², RMU
    forget_hidden_positions: Tensor | None = None
    retain_hidden_se: Tensor | None = None  # Σ over answer positions of mean_h (h − h_frozen)², RMU
    retain_hidden_positions: Tensor | None = None


def sequence_fields() -> tuple[str, ...]:
    """Every `StepTerms` field (all hold one value per sequence)."""
    return tuple(f.name for f in dataclasses.fields(StepTerms))


# The callables' types name torch classes as strings: this module is imported to validate configs,
# which must not cost torch's import.
LossFn = Callable[[StepTerms, MethodParams], "tuple[Tensor, Tensor | None]"]
TrainableFn = Callable[["nn.Module", MethodParams], "list[nn.Parameter]"]
# hidden_layer(model, params): the decoder layer whose output the loss reads (RMU's k)
HiddenLayerFn = Callable[["nn.Module", MethodParams], int]
# forget_target(model, params, generator): the fixed vector forget hidden states are pushed to (RMU's c·u)
ForgetTargetFn = Callable[["nn.Module", MethodParams, "torch.Generator"], "Tensor"]
# after_training(θ_o, θ_trained, params) -> θ returned (Task Vector's θ_o − α(θ_ft − θ_o)); works on
# whole tensors or on a rank's FSDP shards alike (element-wise)
AfterTrainingFn = Callable[
    ["Mapping[str, Tensor]", "Mapping[str, Tensor]", MethodParams], "dict[str, Tensor]"
]

NLL_FIELDS: tuple[str, ...] = ("forget_nll", "forget_tokens", "retain_nll", "retain_tokens")


def all_parameters(model: nn.Module, params: MethodParams) -> list[nn.Parameter]:
    """Every parameter trains (the default of every method but RMU)."""
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Method:
    """One unlearning method and its hooks into the one training loop (`raysimnpo.training.loop.train`).

    `loss` turns the gathered `StepTerms` into (forget term, retain term); `needs` says what the loop
    computes for it; `gathered` are the StepTerms fields the loss reads, concatenated over the ranks
    of a data-parallel run; `trainable` picks the parameters AdamW updates; `hidden_layer` and
    `forget_target` ask for hidden-state terms (RMU); `after_training` rewrites the trained weights
    (Task Vector). A new method is one entry in `METHODS` (or `register`) plus its objectives.
    """

    name: str
    params: type[MethodParams]
    loss: LossFn
    needs: frozenset[Need]
    paper: str
    gathered: tuple[str, ...] = NLL_FIELDS
    trainable: TrainableFn = all_parameters
    hidden_layer: HiddenLayerFn | None = None
    forget_target: ForgetTargetFn | None = None
    after_training: AfterTrainingFn | None = None

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
        assert t.retain_kl is not None and t.retain_tokens is not None
        retain = objectives.token_mean(t.retain_kl, t.retain_tokens)
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
    assert t.forget_hidden_se is not None and t.forget_hidden_positions is not None
    assert t.retain_hidden_se is not None and t.retain_hidden_positions is not None
    # objectives.rmu_forget_loss / rmu_retain_loss, from the per-sequence sums of the global batch
    forget = objectives.token_mean(t.forget_hidden_se, t.forget_hidden_positions)
    return forget, objectives.token_mean(t.retain_hidden_se, t.retain_hidden_positions)


def layer_mistake(layer: int, n_layers: int) -> str | None:
    """Why RMU's `method.layer` cannot be `layer` on a model of `n_layers` decoder layers, or None.
    The commands check it against the model's config before any work (`cli.run`, `cli.sweep`)."""
    if layer < n_layers:
        return None
    return f"{layer} but the model has {n_layers} decoder layers; allowed: 0 to {n_layers - 1} (or null: the middle one)"


def rmu_layer(model: nn.Module, params: MethodParams) -> int:
    """RMU's layer k: `params.layer`, or the middle decoder layer."""
    assert isinstance(params, RMUParams)
    n_layers = int(model.config.num_hidden_layers)  # type: ignore[union-attr, arg-type]
    layer = params.layer if params.layer is not None else n_layers // 2
    mistake = layer_mistake(layer, n_layers)
    if mistake is not None:
        raise ValueError(f"method.layer: {mistake}")
    return layer


def _rmu_trainable(model: nn.Module, params: MethodParams) -> list[nn.Parameter]:
    """The MLPs of layers k-n+1..k (WMDP's recipe); every other parameter is frozen."""
    assert isinstance(params, RMUParams)
    k = rmu_layer(model, params)
    chosen = {f"layers.{i}.mlp." for i in range(max(0, k - params.trainable_layers + 1), k + 1)}
    selected = []
    for name, p in model.named_parameters():
        keep = any(tag in name for tag in chosen)
        p.requires_grad_(keep)
        if keep:
            selected.append(p)
    return selected


def _rmu_target(model: nn.Module, params: MethodParams, generator: torch.Generator) -> Tensor:
    """c·u, u a fixed random unit vector drawn from the run's generator (so runs repeat)."""
    assert isinstance(params, RMUParams)
    import torch

    u = torch.rand(int(model.config.hidden_size), generator=generator)  # type: ignore[union-attr, arg-type]
    return params.steering_coeff * u / u.norm()


def _task_vector_finetune(t: StepTerms, p: MethodParams) -> tuple[Tensor, Tensor | None]:
    # Task Vector first fine-tunes *towards* the forget set (plain NLL descent); `after_training`
    # then negates the resulting task vector.
    return objectives.retain_nll_loss(t.forget_nll, t.forget_tokens), None


def _negate_task_vector(
    original: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], params: MethodParams
) -> dict[str, Tensor]:
    assert isinstance(params, TaskVectorParams)
    import torch

    with torch.no_grad():
        return objectives.task_vector(dict(original), dict(finetuned), params.alpha)


METHODS: MutableMapping[str, Method] = {
    m.name: m
    for m in (
        Method("ga", GAParams, _ga, frozenset(), "TOFU (Maini et al., 2024): gradient ascent"),
        Method(
            "grad_diff",
            GradDiffParams,
            _grad_diff,
            frozenset(),
            "TOFU: gradient difference, eq. 1",
            gathered=(*NLL_FIELDS, "retain_kl"),
        ),
        Method(
            "npo",
            NPOParams,
            _npo,
            frozenset({"reference_nll"}),
            "Zhang et al., 2024; SimNPO paper eq. 2",
            gathered=(*NLL_FIELDS, "forget_ref_nll"),
        ),
        Method("simnpo", SimNPOParams, _simnpo, frozenset(), "SimNPO paper eq. 4"),
        Method("w_grad_diff", WGradDiffParams, _w_grad_diff, frozenset(), "SimNPO paper, eq. 5 as β→0"),
        Method(
            "idk_nll",
            IdkNLLParams,
            _idk_nll,
            frozenset({"idk"}),
            "TOFU: IDK fine-tuning",
            gathered=(*NLL_FIELDS, "idk_nll", "idk_tokens"),
        ),
        Method(
            "idk_dpo",
            IdkDPOParams,
            _idk_dpo,
            frozenset({"idk", "reference_nll"}),
            "TOFU / Zhang et al., 2024: DPO towards refusals",
            gathered=(*NLL_FIELDS, "forget_ref_nll", "idk_nll", "idk_tokens", "idk_ref_nll"),
        ),
        Method(
            "rmu",
            RMUParams,
            _rmu,
            frozenset({"frozen_model", "hidden_states"}),
            "Li et al., 2024 (WMDP): representation misdirection",
            gathered=(
                "forget_hidden_se",
                "forget_hidden_positions",
                "retain_hidden_se",
                "retain_hidden_positions",
            ),
            trainable=_rmu_trainable,
            hidden_layer=rmu_layer,
            forget_target=_rmu_target,
        ),
        Method(
            "task_vector",
            TaskVectorParams,
            _task_vector_finetune,
            frozenset(),
            "Ilharco et al., 2023 (MUSE)",
            after_training=_negate_task_vector,
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
    """The method's `after_training` step (θ = θ_o − α(θ_ft − θ_o) for Task Vector); methods without
    one keep the trained weights."""
    step = METHODS[params.name].after_training
    return dict(finetuned) if step is None else step(original, finetuned, params)


def register(method: Method) -> Method:
    """Add a method to `METHODS` under its name (an existing name is refused). Its hyperparameter
    model must have a `name` Literal equal to `method.name`; configs that go through
    `AnyMethodParams` know only the built-in methods, so a registered method is run with its own
    params object (`recipes.unlearn.unlearn_model(..., method=params)`)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    unknown = sorted(set(method.gathered) - set(sequence_fields()))
    if unknown:
        raise ValueError(f"method {method.name!r}: gathered names unknown StepTerms fields {unknown}")
    METHODS[method.name] = method
    return method
