"""The synthetic mixture-of-Markov-chains benchmark (SimNPO paper §5, appendix B, Fig. 6). No Ray.

Data: three chains over 10 states (`raysimnpo.maths.metrics.markov`): retain (10,000 sequences), Forget1 and
Forget2 (5,000 each; the forget set is their equal mixture), each split 80/20 into train and test.
Each chain is sampled from its own stream of the seed, so changing Forget2's length leaves the retain
and Forget1 sequences as they were (and Retrain is shared by experiments with the same retain data).

Model: `transformers.GPT2LMHeadModel`, 4 layers, 4 heads, n_embd 128, a vocabulary of exactly the 10
states. The input is the whole sequence; the output at position t predicts s_{t+1}, so a sequence
of length L has |y| = L − 1 predicted tokens (there is no start token, so s_0 is never predicted).
Mixed lengths are right-padded; padded labels are −100 (causal attention keeps the padding from
affecting earlier positions).

Pretraining (appendix B): AdamW lr 5e-4, batch 128, 5 epochs, token-mean cross-entropy over every
next-state prediction of the batch. Original: retain + Forget1 + Forget2 (experiment (b): without
Forget2). Retrain: retain only. Both are cached as Hugging Face folders (safetensors) under
`<root>/markov-<role>-<content hash of what trained them>/`.

Unlearning (appendix B): 50 iterations of AdamW (lr 5e-4) on batches of 4 forget sequences with
NPO (eq. 2; π_ref = the Original, ℓ_ref computed once for the forget train set) or SimNPO (eq. 4,
γ = 0), ℓ = summed NLL of a sequence's predicted tokens and |y| their number; with a retain weight
λ > 0 the loss adds λ × the token-mean NLL of a retain batch (eq. 1). Every `eval_every` iterations
(and at 0) the Markov KL (`raysimnpo.maths.metrics.markov.sequence_kl`) is measured on the Forget1, Forget2
and retain test sequences. All runs of an experiment see the same batches.

Both pretraining and unlearning run through the one training loop, `raysimnpo.training.loop.train`, with
NPO and SimNPO taken from `raysimnpo.methods.METHODS` (their losses, eqs. 2 and 4): a constant
learning rate, no gradient clipping, unlearning stopped after `iterations` steps and evaluated by
the loop's per-step hook. Forget batches are consecutive slices of a shuffled pass over the forget
train set drawn by the loop's seeded generator, each paired with an equal-sized retain batch.

Experiments (appendix B, "Choice of hyperparameters"): (a) retain and Forget1 of length 20, Forget2
of length 5, β_NPO = 0.2, β_SimNPO = 4; (b) all of length 20, Forget2 left out of pretraining,
β_NPO = 1, β_SimNPO = 4.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field, model_validator
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from ..config.base import (
    Frozen,
    Seed,
    TrainSettings,
    content_hash,
    load_yaml,
    sweep_file,
    validate,
)
from ..data.formatting import EncodedExample
from ..errors import UserInputError
from ..maths.logprobs import IGNORE_INDEX
from ..maths.metrics.markov import NUM_STATES, MarkovChain, paper_chain, sequence_kl
from ..methods import METHODS as UNLEARNING_METHODS
from ..methods import MethodParams
from ..training.loop import UnlearnInputs, train
from ..training.scoring import score_sequences

NAME = "markov"
SCHEMA_VERSION = 1
CHAINS: tuple[str, ...] = ("retain", "forget1", "forget2")
FIG6_METHODS: tuple[str, ...] = ("npo", "simnpo")
"""The methods of Fig. 6: entries of `raysimnpo.methods.METHODS`, trained by `raysimnpo.training.loop.train`."""
Method = Literal["npo", "simnpo"]
Role = Literal["original", "retrain"]
Log = Callable[[str], None]
Row = dict[str, Any]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class MarkovDataSettings(Frozen):
    """Appendix B's data: leakage ε, sequences per chain, the train/test split."""

    epsilon: float = Field(0.2, gt=0, lt=1, description="leakage probability ε")
    num_retain: int = Field(10_000, ge=2)
    num_forget1: int = Field(5_000, ge=2)
    num_forget2: int = Field(5_000, ge=2)
    test_fraction: float = Field(0.2, gt=0, lt=1)


class MarkovModelSettings(Frozen):
    """GPT-2 over the 10 states (appendix B: 4 layers, 4 heads, embedding 128)."""

    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    n_positions: int = Field(20, gt=1, description="position embeddings; at least the longest sequence")
    dropout: float = Field(0.0, ge=0, lt=1, description="GPT-2's resid/embd/attn dropout (paper code: 0)")

    @model_validator(mode="after")
    def _check_heads(self) -> MarkovModelSettings:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class MarkovPretrainSettings(Frozen):
    """Pretraining of Original and Retrain: AdamW, token-mean cross-entropy (appendix B)."""

    epochs: int = Field(5, gt=0)
    batch_size: int = Field(128, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (the paper code's AdamW: 0)")


class MarkovUnlearnSettings(Frozen):
    """Unlearning: iterations of AdamW on forget batches (appendix B), evaluated every `eval_every`."""

    iterations: int = Field(50, gt=0)
    batch_size: int = Field(4, gt=0, description="forget sequences per iteration")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int = Field(5, gt=0, description="evaluate at 0, every N iterations and at the end")
    gamma: float = Field(0.0, ge=0, description="SimNPO's reward margin γ (paper eq. 4; 0 here)")
    retain_weight: float = Field(0.0, ge=0, description="λ of eq. 1; 0 = forget loss only, as the paper")
    retain_batch_size: int = Field(
        4, gt=0, description="retain sequences per iteration; equal to batch_size (eq. 1's paired batches)"
    )

    @model_validator(mode="after")
    def _paired_batches(self) -> MarkovUnlearnSettings:
        if self.retain_batch_size != self.batch_size:
            raise ValueError(
                f"retain_batch_size: {self.retain_batch_size}; allowed: the batch_size ({self.batch_size}), "
                "since the training loop pairs each forget batch with a retain batch of the same size"
            )
        return self


class MethodBetas(Frozen):
    npo: float = Field(gt=0)
    simnpo: float = Field(gt=0)


class BetaGrid(Frozen):
    """Extra β values per method, run for every experiment besides the experiment's own β."""

    npo: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])
    simnpo: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])

    @model_validator(mode="after")
    def _positive(self) -> BetaGrid:
        for method in FIG6_METHODS:
            bad = [b for b in getattr(self, method) if not b > 0]
            if bad:
                raise ValueError(f"{method}: every beta must be > 0; got {bad}")
        return self


class MarkovExperiment(Frozen):
    """One panel of Fig. 6: sequence lengths, whether Forget2 is in pretraining, the paper's β."""

    description: str = ""
    retain_length: int = Field(20, gt=1)
    forget1_length: int = Field(20, gt=1)
    forget2_length: int = Field(20, gt=1)
    forget2_in_pretraining: bool = True
    beta: MethodBetas

    def length(self, chain: str) -> int:
        return int(getattr(self, f"{chain}_length"))


def _paper_experiments() -> dict[str, MarkovExperiment]:
    return {
        "a": MarkovExperiment(
            description="Forget2 short (length 5)",
            forget2_length=5,
            beta=MethodBetas(npo=0.2, simnpo=4.0),
        ),
        "b": MarkovExperiment(
            description="Forget2 not in pretraining",
            forget2_in_pretraining=False,
            beta=MethodBetas(npo=1.0, simnpo=4.0),
        ),
    }


class MarkovConfig(Frozen):
    """Everything that determines the Markov study's numbers; defaults are the paper's (appendix B)."""

    seed: Seed = 0
    data: MarkovDataSettings = MarkovDataSettings()
    model: MarkovModelSettings = MarkovModelSettings()
    pretrain: MarkovPretrainSettings = MarkovPretrainSettings()
    unlearn: MarkovUnlearnSettings = MarkovUnlearnSettings()
    experiments: dict[str, MarkovExperiment] = Field(default_factory=_paper_experiments)
    beta_grid: BetaGrid = BetaGrid()
    eval_batch_size: int = Field(250, gt=0, description="test sequences per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> MarkovConfig:
        if not self.experiments:
            raise ValueError("experiments: at least one is needed")
        for name, exp in self.experiments.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"experiments.{name}: names are letters, digits, '-' and '_'")
            for chain in CHAINS:
                if exp.length(chain) > self.model.n_positions:
                    raise ValueError(
                        f"experiments.{name}.{chain}_length: {exp.length(chain)} exceeds "
                        f"model.n_positions ({self.model.n_positions})"
                    )
        for chain in CHAINS:
            n = self.count(chain)
            n_test = round(n * self.data.test_fraction)
            if not 0 < n_test < n:
                raise ValueError(f"data.num_{chain}: {n} sequences leave an empty train or test split")
        return self

    def count(self, chain: str) -> int:
        return int(getattr(self.data, f"num_{chain}"))

    def betas(self, experiment: str, method: str) -> list[float]:
        """The experiment's own β and the grid's, sorted."""
        exp = self.experiments[experiment]
        return sorted({float(getattr(exp.beta, method)), *map(float, getattr(self.beta_grid, method))})

    def grid(self) -> list[tuple[str, str, float]]:
        """Every (experiment, method, β) unlearning run."""
        return [(e, m, b) for e in self.experiments for m in FIG6_METHODS for b in self.betas(e, m)]


class MarkovResources(Frozen):
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs (and torch threads) per Ray task")
    gpus_per_task: float = Field(0.0, ge=0)


class MarkovSweep(Frozen):
    """A Markov sweep file (sweeps/markov.yaml): `benchmark: markov` and a `markov:` section."""

    benchmark: Literal["markov"]
    name: str = Field("markov", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = Field("runs", description="a local folder; results go to <storage>/<name>/")
    markov: MarkovConfig = MarkovConfig()
    resources: MarkovResources = MarkovResources()

    @model_validator(mode="after")
    def _check_gpus(self) -> MarkovSweep:
        if self.markov.device == "cuda" and self.resources.gpus_per_task == 0:
            raise ValueError("markov.device: cuda needs resources.gpus_per_task > 0; or use auto or cpu")
        return self


def is_markov_sweep(name_or_path: str) -> bool:
    """Whether a sweep name or file is a Markov sweep (`benchmark: markov` at the top level).
    Unreadable or unknown files are not: the caller's own loading reports them."""
    try:
        return load_yaml(sweep_file(name_or_path)).get("benchmark") == NAME
    except UserInputError:
        return False


def load_markov_sweep(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> MarkovSweep:
    path = sweep_file(name_or_path)
    return validate(MarkovSweep, load_yaml(path), str(path), overrides)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainSplit:
    """One chain's sequences, [N, L] int64 state tokens, split into train and test."""

    train: NDArray[np.int64]
    test: NDArray[np.int64]


def sample_chain(chain: MarkovChain, n: int, length: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """`n` sequences of `length` states: s_0 ~ π, s_{t+1} ~ T[s_t] (inverse-CDF sampling, vectorised)."""
    cdf_initial = np.cumsum(chain.initial)
    cdf_rows = np.cumsum(chain.transition, axis=1)
    cdf_initial[-1] = 1.0
    cdf_rows[:, -1] = 1.0
    states = np.empty((n, length), dtype=np.int64)
    states[:, 0] = (rng.random(n)[:, None] >= cdf_initial[None, :]).sum(axis=1)
    for t in range(1, length):
        states[:, t] = (rng.random(n)[:, None] >= cdf_rows[states[:, t - 1]]).sum(axis=1)
    return states


def sample_data(config: MarkovConfig, experiment: MarkovExperiment) -> dict[str, ChainSplit]:
    """The retain, forget1 and forget2 sequences of an experiment, each from its own seed stream."""
    data = {}
    for index, name in enumerate(CHAINS):
        rng = np.random.default_rng([config.seed, index])
        n = config.count(name)
        sequences = sample_chain(paper_chain(name, config.data.epsilon), n, experiment.length(name), rng)
        order = rng.permutation(n)
        n_test = round(n * config.data.test_fraction)
        data[name] = ChainSplit(train=sequences[order[n_test:]], test=sequences[order[:n_test]])
    return data


def pad(arrays: list[NDArray[np.int64]]) -> torch.Tensor:
    """Stack sequence arrays of possibly different lengths into one [N, L_max] tensor, right-padded
    with IGNORE_INDEX (-100): it serves as the labels; `inputs` turns it into input ids."""
    width = max(a.shape[1] for a in arrays)
    out = torch.full((sum(a.shape[0] for a in arrays), width), IGNORE_INDEX, dtype=torch.long)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = torch.from_numpy(a)
        row += a.shape[0]
    return out


def inputs(labels: torch.Tensor) -> torch.Tensor:
    """Input ids of padded labels: padding becomes state 0 (never attended to by earlier positions)."""
    return labels.clamp(min=0)


def pretraining_chains(experiment: MarkovExperiment, role: Role) -> tuple[str, ...]:
    if role == "retrain":
        return ("retain",)
    return ("retain", "forget1", "forget2") if experiment.forget2_in_pretraining else ("retain", "forget1")


# --------------------------------------------------------------------------------------------
# Model, pretraining, evaluation
# --------------------------------------------------------------------------------------------


def resolve_device(config: MarkovConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("markov.device: cuda requested but no GPU is visible; allowed here: auto, cpu")
    return torch.device(config.device)


def build_model(settings: MarkovModelSettings, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 over the 10 states (drawn from `seed`; the global RNG is kept)."""
    gpt2 = GPT2Config(
        vocab_size=NUM_STATES,
        n_positions=settings.n_positions,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        resid_pdrop=settings.dropout,
        embd_pdrop=settings.dropout,
        attn_pdrop=settings.dropout,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(gpt2)
    return model.float()


def load_model(path: Path | str, device: torch.device) -> GPT2LMHeadModel:
    hf_logging.disable_progress_bar()  # no per-load progress bars in logs
    model = GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32)
    return model.to(device)


def encoded(arrays: list[NDArray[np.int64]]) -> list[EncodedExample]:
    """Sequences as the training loop's examples: the input is the whole sequence and every state
    after the first is a target (labels[0] is IGNORE_INDEX; `logprobs.sequence_nll` shifts), so
    |y| = L − 1. The loop right-pads with state 0 under an attention mask of 0."""
    return [
        EncodedExample(row.tolist(), [IGNORE_INDEX, *row[1:].tolist()]) for array in arrays for row in array
    ]


def loop_settings(epochs: int, batch_size: int, learning_rate: float, weight_decay: float) -> TrainSettings:
    """The training loop's settings for a Markov run: AdamW without warm-up; gradients are not
    clipped (appendix B's runs clip nothing)."""
    return TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_epochs=0.0,
        max_grad_norm=None,
    )


def pretrain(
    model: GPT2LMHeadModel,
    examples: list[EncodedExample],
    settings: MarkovPretrainSettings,
    seed: int,
    log: Log = _quiet,
    name: str = "model",
) -> list[float]:
    """Train on the `examples` with the one training loop (`training.train`): AdamW at a constant
    learning rate, every epoch a fresh shuffle, loss = token-mean NLL of the batch's next-state
    predictions (eq. 1's L_retain form). Returns the mean training loss of each epoch."""

    def show(row: dict[str, Any]) -> None:
        log(f"[prepare] {name} epoch {int(row['epoch'])}/{settings.epochs} loss {row['loss']:.4f}")

    summary = train(
        model,
        loop_settings(settings.epochs, settings.batch_size, settings.learning_rate, settings.weight_decay),
        pad_id=0,
        seed=seed,
        examples=examples,
        report=show,
        lr_schedule="constant",
    )
    return [row["loss"] for row in summary.epochs]


@torch.inference_mode()
def per_sequence_kl(
    model: GPT2LMHeadModel, sequences: NDArray[np.int64], chain: MarkovChain, batch_size: int
) -> NDArray[np.float64]:
    """The Markov metric of each sequence of one chain's split (`metrics.markov.sequence_kl`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values = []
    for start in range(0, sequences.shape[0], batch_size):
        chunk = sequences[start : start + batch_size]
        logits = model(input_ids=torch.from_numpy(chunk).to(device)).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        values.append(sequence_kl(log_probs, chunk, chain))
    model.train(was_training)
    return np.concatenate(values)


def evaluate(model: GPT2LMHeadModel, data: dict[str, ChainSplit], config: MarkovConfig) -> dict[str, float]:
    """Mean Markov KL on the Forget1, Forget2 and retain test sequences: `forget1_kl`, `forget2_kl`,
    `retain_kl` (higher = more forgotten on forget data; lower = better on retain data)."""
    return {
        f"{name}_kl": float(
            per_sequence_kl(
                model, data[name].test, paper_chain(name, config.data.epsilon), config.eval_batch_size
            ).mean()
        )
        for name in ("forget1", "forget2", "retain")
    }


# --------------------------------------------------------------------------------------------
# Prepared models (cached)
# --------------------------------------------------------------------------------------------


def model_key(config: MarkovConfig, experiment: MarkovExperiment, role: Role) -> str:
    """Content hash of what trains a prepared model: its chains' data, the model, pretraining, seed."""
    chains = {
        name: {"count": config.count(name), "length": experiment.length(name)}
        for name in pretraining_chains(experiment, role)
    }
    data = {"epsilon": config.data.epsilon, "test_fraction": config.data.test_fraction, "chains": chains}
    return content_hash("markov-pretrain", {"seed": config.seed, "data": data}, config.model, config.pretrain)


def model_dir(root: Path, config: MarkovConfig, experiment: MarkovExperiment, role: Role) -> Path:
    return Path(root) / f"markov-{role}-{model_key(config, experiment, role)}"


def prepare_model(
    config: MarkovConfig, experiment: MarkovExperiment, role: Role, root: Path, log: Log = _quiet
) -> Path:
    """The Original (retain + Forget1 [+ Forget2]) or Retrain (retain) model of an experiment, trained
    once and cached as a Hugging Face folder `<root>/markov-<role>-<hash>/model`; returns that folder."""
    final = model_dir(root, config, experiment, role)
    if (final / "model" / "model.safetensors").is_file():
        log(f"[prepare] {role}: cached at {final}")
        return final / "model"
    final.mkdir(parents=True, exist_ok=True)
    data = sample_data(config, experiment)
    chains = pretraining_chains(experiment, role)
    examples = encoded([data[c].train for c in chains])
    log(f"[prepare] {role}: {len(examples)} sequences of {'+'.join(chains)}, {config.pretrain.epochs} epochs")
    model = build_model(config.model, config.seed).to(resolve_device(config))
    started = time.perf_counter()
    losses = pretrain(model, examples, config.pretrain, config.seed, log, role)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=final))
    hf_logging.disable_progress_bar()
    model.save_pretrained(staging, safe_serialization=True)
    summary = {
        "role": role,
        "chains": list(chains),
        "epoch_losses": losses,
        "seconds": time.perf_counter() - started,
    }
    (staging / "training.json").write_text(json.dumps(summary))
    try:
        staging.rename(final / "model")
    except OSError:  # another process finished the same model first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / "model" / "model.safetensors").is_file():
            raise
    return final / "model"


def reference_row(config: MarkovConfig, experiment_name: str, role: Role, path: Path | str) -> Row:
    """The KLs of a prepared model on an experiment's test sequences, as a trajectory row
    (`method` = the role, no β or iteration)."""
    data = sample_data(config, config.experiments[experiment_name])
    model = load_model(path, resolve_device(config))
    return _row(experiment_name, role, None, None, evaluate(model, data, config))


# --------------------------------------------------------------------------------------------
# Unlearning
# --------------------------------------------------------------------------------------------


def _row(
    experiment: str, method: str, beta: float | None, iteration: int | None, kls: dict[str, float]
) -> Row:
    return {"experiment": experiment, "method": method, "beta": beta, "iteration": iteration, **kls}


def method_params(method: str, beta: float, settings: MarkovUnlearnSettings) -> MethodParams:
    """The hyperparameters of a Fig. 6 method in `raysimnpo.methods.METHODS`: β, SimNPO's γ, λ."""
    if method not in FIG6_METHODS:
        raise UserInputError(f"method {method!r}: unknown; allowed: {', '.join(FIG6_METHODS)}")
    params = UNLEARNING_METHODS[method].params
    values = {"beta": beta, "gamma": settings.gamma, "retain_weight": settings.retain_weight}
    return params.model_validate({k: v for k, v in values.items() if k in params.model_fields})


def unlearn_trajectory(
    config: MarkovConfig,
    experiment_name: str,
    method: str,
    beta: float,
    original: Path | str,
    log: Log = _quiet,
) -> list[Row]:
    """Unlearn the forget mixture from the Original with NPO or SimNPO at `beta` through the one
    training loop (`training.train`, the method's loss from `raysimnpo.methods.METHODS`): batches of
    `batch_size` forget sequences from a shuffled pass over the forget train set (paired with
    equal-sized retain batches, which enter the loss only with λ > 0), `iterations` AdamW steps at
    a constant learning rate. Returns one row {experiment, method, beta, iteration, forget1_kl,
    forget2_kl, retain_kl} per evaluation (iteration 0 = the Original, then every `eval_every`
    iterations and the last one, from the loop's per-step hook)."""
    if experiment_name not in config.experiments:
        raise UserInputError(
            f"experiment {experiment_name!r}: unknown; allowed: {', '.join(config.experiments)}"
        )
    settings = config.unlearn
    params = method_params(method, beta, settings)
    data = sample_data(config, config.experiments[experiment_name])
    model = load_model(original, resolve_device(config))
    forget = encoded([data["forget1"].train, data["forget2"].train])
    inputs = UnlearnInputs(forget=forget, retain=encoded([data["retain"].train]))
    if "reference_nll" in UNLEARNING_METHODS[method].needs:  # NPO's ℓ_ref, once, by the Original
        ref_nll = score_sequences(model, forget, config.eval_batch_size, 0)[0]
        inputs.forget_ref_nll = torch.tensor(ref_nll, dtype=torch.float32)

    rows = [_row(experiment_name, method, beta, 0, evaluate(model, data, config))]

    def evaluate_every(iteration: int, loss: float) -> None:
        if iteration % settings.eval_every and iteration != settings.iterations:
            return
        rows.append(_row(experiment_name, method, beta, iteration, evaluate(model, data, config)))
        last = rows[-1]
        log(
            f"[unlearn] {experiment_name} {method} β={beta:g} it {iteration}: loss {loss:.4f} "
            f"F1 {last['forget1_kl']:.4f} F2 {last['forget2_kl']:.4f} retain {last['retain_kl']:.4f}"
        )

    # The same batches for every method and β of an experiment (seeded by the config only).
    passes = -(-settings.iterations * settings.batch_size // len(forget))
    train(
        model,
        loop_settings(passes, settings.batch_size, settings.learning_rate, settings.weight_decay),
        pad_id=0,
        seed=config.seed,
        unlearn=inputs,
        params=params,
        max_steps=settings.iterations,
        on_step=evaluate_every,
        lr_schedule="constant",
    )
    return rows


# --------------------------------------------------------------------------------------------
# The Benchmark protocol (`raysimnpo.benchmarks.base`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkovWorkspace:
    """What the protocol's calls read for one experiment: its config, the experiment and its data."""

    config: MarkovConfig
    experiment: MarkovExperiment
    data: dict[str, ChainSplit]


class MarkovBenchmark:
    """The Markov study behind the `Benchmark` protocol. Its run config is a `MarkovConfig` with one
    experiment (`load` takes `(config, experiment name)`); its examples are state sequences, its
    metrics the KL of each chain's test sequences, and Retrain is a model to compare with, not a
    reference the metrics are computed against."""

    name = NAME
    headline_metrics: tuple[str, ...] = ("markov_forget1_kl", "markov_forget2_kl", "markov_retain_kl")
    metrics = headline_metrics
    default_objectives: tuple[str, ...] = ("markov_forget1_kl", "markov_retain_kl")
    methods: tuple[str, ...] = FIG6_METHODS
    relearning = False
    own_sweep = True
    training_unit = "sequences"

    def check_method(self, method: str) -> None:
        if method not in FIG6_METHODS:
            raise UserInputError(f"method {method!r}: unknown; allowed: {', '.join(FIG6_METHODS)}")

    def load(self, config: tuple[MarkovConfig, str]) -> MarkovWorkspace:
        markov, name = config
        experiment = markov.experiments[name]
        return MarkovWorkspace(markov, experiment, sample_data(markov, experiment))

    def corpus(self, data: MarkovWorkspace) -> list[str]:
        """The states are the vocabulary: there is no tokenizer to train."""
        return []

    def training_examples(self, ws: MarkovWorkspace, kind: str, max_length: int) -> torch.Tensor:
        """Padded train sequences: Original's and Retrain's pretraining chains, the Forget1+Forget2
        mixture, or retain."""
        chains = {
            "original": pretraining_chains(ws.experiment, "original"),
            "retrain": pretraining_chains(ws.experiment, "retrain"),
            "forget": ("forget1", "forget2"),
            "retain": ("retain",),
        }[kind]
        return pad([ws.data[c].train for c in chains])

    def reference_examples(self, ws: MarkovWorkspace, max_length: int) -> tuple[torch.Tensor, list[Any]]:
        return self.training_examples(ws, "forget", max_length), []

    def check_encoding(self, ws: MarkovWorkspace) -> None:
        """Sequence lengths are checked against the model's positions by `MarkovConfig`."""

    def forget_description(self, data: MarkovWorkspace) -> str:
        return f"{sum(data.data[c].train.shape[0] for c in ('forget1', 'forget2'))} forget sequences"

    def evaluation_items(self, ws: MarkovWorkspace) -> list[dict[str, Any]]:
        return [
            {"split": chain, "index": i, "states": [int(s) for s in row]}
            for chain in ("forget1", "forget2", "retain")
            for i, row in enumerate(ws.data[chain].test)
        ]

    def score_items(self, model: Any, ws: MarkovWorkspace, items: Any) -> list[dict[str, Any]]:
        """Each test sequence's KL(true ‖ model) (`metrics.markov.sequence_kl`)."""
        by_chain: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_chain.setdefault(item["split"], []).append(item)
        out: list[dict[str, Any]] = []
        for chain, group in by_chain.items():
            sequences = np.array([item["states"] for item in group], dtype=np.int64)
            kl = per_sequence_kl(
                model, sequences, paper_chain(chain, ws.config.data.epsilon), ws.config.eval_batch_size
            )
            out += [
                {"split": chain, "index": item["index"], "kl": float(v)}
                for item, v in zip(group, kl, strict=True)
            ]
        return out

    def aggregate(self, ws: MarkovWorkspace, examples: list[dict[str, Any]], reference: Any) -> Any:
        from .base import Evaluation

        metrics = {
            f"markov_{chain}_kl": float(np.mean([e["kl"] for e in examples if e["split"] == chain]))
            for chain in ("forget1", "forget2", "retain")
        }
        return Evaluation(metrics=metrics, examples=examples)

    def retrain_reference(self, retrain: Any) -> None:
        return None

    def planned_workload(self, run: Any) -> None:
        """The resource plan's sizes are not known without loading this benchmark's data."""
        return None

    def has_retrain(self, config: Any) -> bool:
        return True

    def released_model(self, config: Any, role: str) -> str | None:
        return None

    def cache_key_parts(self, config: tuple[MarkovConfig, str], part: str) -> tuple[Any, ...]:
        markov, name = config
        role: Role = "retrain" if part == "retrain" else "original"
        return (model_key(markov, markov.experiments[name], role),)
