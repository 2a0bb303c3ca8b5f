"""Relearning attacks (paper appendix C.3, Fig. A3; Hu et al., 2024): fine-tune an unlearned model
on a small part of the forget set and watch forget quality fall back towards the Original's.

Two ways to pick the part (`fraction` of the forget set, 20% in the paper):
  shortest  the examples with the fewest answer tokens |y| (ties: forget-set order), the attack
            that exposes a method that under-forgets short answers (the paper's limitation L1);
  random    a uniform draw from `seed` (the paper averages 5 seeds).

The attacker fine-tunes with the one training loop (token-mean NLL of the answers, eq. 1's retain
term applied to the chosen forget examples) and, after every relearning epoch, the whole forget set
is scored and its truth ratios compared with the Retrain model's (forget quality, DESIGN §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel

from ..benchmarks.tofu_evaluation import example_statistics
from ..config.base import TrainSettings
from ..config.sweep import RelearnSettings
from ..maths.metrics import tofu
from ..training.loop import train
from .workspace import Workspace

Attack = Literal["shortest", "random"]
SCORES = ("forget_quality", "forget_quality_ks_statistic", "forget_prob", "forget_truth_ratio")


def attack_indices(answer_tokens: Sequence[int], attack: Attack, fraction: float, seed: int) -> list[int]:
    """Positions in the forget set of the examples the attacker relearns, sorted; at least one."""
    n = len(answer_tokens)
    k = max(1, round(fraction * n))
    if attack == "shortest":
        order = sorted(range(n), key=lambda i: (answer_tokens[i], i))
    elif attack == "random":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        raise ValueError(f"attack: {attack!r}; allowed: shortest, random")
    return sorted(order[:k])


def forget_scores(
    ws: Workspace, model: PreTrainedModel, retrain_truth_ratios: np.ndarray
) -> dict[str, float]:
    """Forget quality (KS test of the truth ratios against Retrain's), mean answer probability and
    the forget truth-ratio score of the whole forget evaluation set; scoring only, no generation."""
    split = ws.data.eval_split("forget")
    stats = example_statistics(
        model,
        ws.encoder,
        split,
        split.rows,
        ws.config.evaluation,
        ws.config.prepare.max_length,
        generate=False,
    )
    ratios = tofu.truth_ratio(
        np.array([e["perturbed_nll"] for e in stats]),
        np.array([e["perturbed_tokens"] for e in stats], dtype=np.float64),
        np.array([e["reference_nll"] for e in stats]),
        np.array([e["reference_tokens"] for e in stats], dtype=np.float64),
    )
    prob = tofu.answer_prob(
        np.array([e["answer_nll"] for e in stats]),
        np.array([e["answer_tokens"] for e in stats], dtype=np.float64),
    )
    fq = tofu.forget_quality(ratios, retrain_truth_ratios)
    return {
        "forget_quality": fq.pvalue,
        "forget_quality_ks_statistic": fq.statistic,
        "forget_prob": float(np.mean(prob)),
        "forget_truth_ratio": tofu.forget_truth_score(ratios),
    }


def relearn(
    ws: Workspace,
    model: PreTrainedModel,
    attack: Attack,
    seed: int,
    settings: RelearnSettings,
    retrain_truth_ratios: np.ndarray,
) -> list[dict[str, Any]]:
    """Attack `model` in place; one row per relearning epoch, epoch 0 being the model as given."""
    forget = ws.encode(ws.data.forget)
    answer_tokens = [sum(label != -100 for label in e.labels) for e in forget]
    chosen = attack_indices(answer_tokens, attack, settings.fraction, seed)
    common = {"attack": attack, "seed": seed, "relearn_examples": len(chosen)}
    rows = [{**common, "epoch": 0, **forget_scores(ws, model, retrain_truth_ratios)}]
    schedule = TrainSettings(
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        warmup_epochs=0.0,
        max_length=ws.config.prepare.max_length,
    )
    train(
        model,
        schedule,
        pad_id=ws.pad_id,
        seed=seed,
        examples=[forget[i] for i in chosen],
        after_epoch=lambda _: forget_scores(ws, model, retrain_truth_ratios),
        report=lambda row: rows.append({**common, "epoch": int(row["epoch"]), **{k: row[k] for k in SCORES}}),
    )
    return rows
