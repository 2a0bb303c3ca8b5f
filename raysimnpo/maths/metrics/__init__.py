"""Benchmark metrics (DESIGN §6) as pure functions over per-example numbers, and each metric's direction.

`METRICS` maps a reported metric name to its `MetricInfo`: whether higher ("max"), lower ("min") or
closer to 0 ("zero") is better, as `raysimnpo.maths.pareto` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pareto import Direction


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures and which way is better."""

    direction: Direction
    description: str


def _tofu_metrics() -> dict[str, MetricInfo]:
    metrics = {
        "forget_quality": MetricInfo("max", "TOFU KS-test p-value of forget truth ratios vs Retrain"),
        "forget_quality_ks_statistic": MetricInfo("min", "TOFU KS statistic behind forget_quality"),
        "model_utility": MetricInfo(
            "max", "TOFU harmonic mean of the 9 retain/real_authors/world_facts numbers"
        ),
        "forget_prob": MetricInfo("min", "TOFU mean normalised answer probability on the forget split"),
        "forget_rouge": MetricInfo("min", "TOFU ROUGE-L recall of greedy answers on the forget split"),
        "forget_truth_ratio": MetricInfo("max", "TOFU mean min(R, 1/R) on the forget split"),
    }
    for split in ("retain", "real_authors", "world_facts"):
        metrics[f"{split}_prob"] = MetricInfo("max", f"TOFU answer probability on {split}")
        metrics[f"{split}_rouge"] = MetricInfo("max", f"TOFU ROUGE-L recall on {split}")
        metrics[f"{split}_truth_ratio"] = MetricInfo("max", f"TOFU mean max(0, 1 - R) on {split}")
    return metrics


NOISE_CEILING = "forget_quality_noise_ceiling"
"""Retrain's metric: FQ of a second Retrain (seed + 1) against Retrain, what a perfect unlearner gets."""

METRICS: dict[str, MetricInfo] = {
    **_tofu_metrics(),
    NOISE_CEILING: MetricInfo(
        "max", "TOFU FQ of a second Retrain (seed + 1) against Retrain (a property of Retrain)"
    ),
    "verbmem_forget": MetricInfo("min", "MUSE ROUGE-L F1 of continuations of forget texts"),
    "knowmem_forget": MetricInfo("min", "MUSE ROUGE-L F1 of QA answers about the forget set"),
    "knowmem_retain": MetricInfo("max", "MUSE ROUGE-L F1 of QA answers about the retain set"),
    "privleak": MetricInfo("zero", "MUSE (AUC_unlearn - AUC_retrain) / AUC_retrain x 100, Min-40% score"),
    "privleak_abs": MetricInfo("min", "MUSE |PrivLeak|: the sweep objective for PrivLeak closest to 0"),
    "privleak_auc": MetricInfo("zero", "MUSE forget_holdout Min-40% AUC (holdout positive) of this model"),
    "wmdp_bio": MetricInfo("min", "WMDP-Bio multiple-choice accuracy"),
    "wmdp_cyber": MetricInfo("min", "WMDP-Cyber multiple-choice accuracy"),
    "wmdp_chem": MetricInfo("min", "WMDP-Chem multiple-choice accuracy"),
    "mmlu": MetricInfo("max", "MMLU multiple-choice accuracy"),
    "wmdp_forget": MetricInfo("max", "1 - mean of the WMDP-Bio and WMDP-Cyber accuracies"),
    "markov_forget1_kl": MetricInfo("max", "Markov KL(true || model) on Forget1 test sequences"),
    "markov_forget2_kl": MetricInfo("max", "Markov KL(true || model) on Forget2 test sequences"),
    "markov_retain_kl": MetricInfo("min", "Markov KL(true || model) on retain test sequences"),
}


def metric_direction(name: str) -> Direction:
    """The direction of a metric in `METRICS`; an unknown name raises ValueError listing the known ones."""
    try:
        return METRICS[name].direction
    except KeyError:
        raise ValueError(f"metric {name!r}: unknown; known metrics {sorted(METRICS)}") from None
