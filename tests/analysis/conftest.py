"""A small fixed sweep written with raysimnpo.results.write_trial_results.

Run "demo" (Retrain MU 0.60, so the selection threshold is MU ≥ 0.55):

    trial        method  config            seed  status     FQ     MU
    original     -       -                 0     completed  0.001  0.62
    retrain      -       -                 0     completed  1.0    0.60
    npo-a        npo     beta 0.1          0     completed  0.20   0.52
    npo-b        npo     beta 0.5          0     completed  0.50   0.40
    npo-c        npo     beta 1.0          0     completed  0.05   0.53   (highest MU; no npo reaches 0.55)
    npo-d        npo     beta 2.0          0     completed  0.10   0.45   (dominated by npo-a)
    simnpo-s0    simnpo  beta 2.5          0     completed  0.60   0.57   \\ one configuration, two seeds:
    simnpo-s1    simnpo  beta 2.5          1     completed  0.80   0.59   /  mean FQ 0.70, MU 0.58
    simnpo-hi    simnpo  beta 4.0          0     completed  0.90   0.30   (highest FQ, MU too low)
    simnpo-fail  simnpo  beta 8.0          0     failed     -      -

Forget example i (of 10) has |y| = 4 + i, so indices 0-4 are the shortest half. Retrain's truth ratio is
0.5 + 0.01 i; the npo trials have 1.5 + 0.01 i on the short half (fully separated from Retrain) and
Retrain's values on the long half; the Original is separated on both halves; the simnpo trials match
Retrain. The npo and simnpo trials have gradient weights for 3 epochs: npo w = 0.5 + 0.05 |y| (Pearson
r = 1), simnpo w' = 2 / |y|.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from raysimnpo.results import results_root, write_trial_results

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")

# trial_id: (kind, method, beta, seed, FQ, MU, forget_rouge, forget_prob, forget_truth_ratio, retain_prob)
TRIALS: dict[str, tuple[str, str, float | None, int, float, float, float, float, float, float]] = {
    "original": ("original", "original", None, 0, 0.001, 0.62, 0.96, 0.99, 0.49, 0.98),
    "retrain": ("retrain", "retrain", None, 0, 1.0, 0.60, 0.39, 0.15, 0.66, 0.97),
    "npo-a": ("trial", "npo", 0.1, 0, 0.20, 0.52, 0.40, 0.10, 0.62, 0.50),
    "npo-b": ("trial", "npo", 0.5, 0, 0.50, 0.40, 0.20, 0.05, 0.70, 0.40),
    "npo-c": ("trial", "npo", 1.0, 0, 0.05, 0.53, 0.50, 0.20, 0.60, 0.55),
    "npo-d": ("trial", "npo", 2.0, 0, 0.10, 0.45, 0.45, 0.15, 0.58, 0.45),
    "simnpo-s0": ("trial", "simnpo", 2.5, 0, 0.60, 0.57, 0.30, 0.05, 0.66, 0.80),
    "simnpo-s1": ("trial", "simnpo", 2.5, 1, 0.80, 0.59, 0.26, 0.03, 0.70, 0.84),
    "simnpo-hi": ("trial", "simnpo", 4.0, 0, 0.90, 0.30, 0.10, 0.01, 0.75, 0.30),
}
FAILED = "simnpo-fail"
QUESTIONS = 10


def generation(trial_id: str, index: int) -> str | None:
    if trial_id == "original":
        return f"Answer number {index} is the memorised one."
    if trial_id == "retrain":
        return None if index == 9 else f"I am not sure about item {index}."
    if trial_id.startswith("npo"):
        return "the author the author the author the author"  # 3-grams: 6, distinct 2 -> 0.67 repeated
    return f"Someone wrote something else for item {index}."


def answer_tokens(index: int) -> int:
    return 4 + index


def forget_truth_ratio(trial_id: str, index: int) -> float:
    base = 0.5 + 0.01 * index
    if trial_id == "original" or (trial_id.startswith("npo") and index < QUESTIONS // 2):
        return base + 1.0
    return base


def gradient_weight(method: str, tokens: int) -> float:
    return 0.5 + 0.05 * tokens if method == "npo" else 2.0 / tokens


def _weights(sweep: str, trial_id: str, method: str) -> list[dict[str, Any]]:
    return [
        {
            "sweep": sweep,
            "trial_id": trial_id,
            "epoch": epoch,
            "index": i,
            "weight": gradient_weight(method, answer_tokens(i)),
            "answer_tokens": answer_tokens(i),
        }
        for epoch in (1, 2, 3)
        for i in range(QUESTIONS)
    ]


def _trial_row(sweep: str, trial_id: str, run_dir: Path, **fields: Any) -> dict[str, Any]:
    kind, method, beta, seed = (
        fields.pop("kind"),
        fields.pop("method"),
        fields.pop("beta"),
        fields.pop("seed"),
    )
    params: dict[str, Any] = {"method": {"name": method}, "unlearn": {"learning_rate": 1e-5, "epochs": 3}}
    if beta is not None:
        params["method"]["beta"] = beta
        params["method"]["gamma"] = 0.0
    checkpoint = run_dir / "checkpoints" / trial_id
    return {
        "sweep": sweep,
        "trial_id": trial_id,
        "kind": kind,
        "method": method,
        "params_json": json.dumps(params, sort_keys=True),
        "beta": beta,
        "gamma": None if beta is None else 0.0,
        "learning_rate": 1e-5,
        "epochs": 3,
        "batch_size": 4,
        "seed": seed,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=60),
        "checkpoint": str(checkpoint),
        **fields,
    }


def _examples(sweep: str, trial_id: str) -> list[dict[str, Any]]:
    return [
        {
            "sweep": sweep,
            "trial_id": trial_id,
            "split": "forget",
            "index": i,
            "question": f"Question {i}: who wrote book {i}?",
            "answer": f"Answer number {i} is the true one.",
            "answer_tokens": answer_tokens(i),
            "answer_nll": 4.0,
            "reference_nll": 4.5,
            "reference_tokens": 9,
            "perturbed_nll": [6.0, 7.0],
            "perturbed_tokens": [8, 8],
            "prob": 0.6,
            "truth_ratio": forget_truth_ratio(trial_id, i),
            "generation": generation(trial_id, i),
            "rouge_l": 0.5,
        }
        for i in range(QUESTIONS)
    ]


def _epochs(sweep: str, trial_id: str, n: int, offset: float) -> list[dict[str, Any]]:
    rows = []
    for epoch in range(1, n + 1):
        for metric, value in (("forget_loss", offset + epoch), ("retain_loss", offset / 10 + 1.0 / epoch)):
            rows.append(
                {
                    "sweep": sweep,
                    "trial_id": trial_id,
                    "stage": "epoch",
                    "epoch": epoch,
                    "metric": metric,
                    "value": value,
                }
            )
    return rows


def write_run(storage: Path, sweep: str = "demo") -> Path:
    """Write the fixture sweep under storage/sweep; returns the run folder."""
    run_dir = storage / sweep
    root = results_root(str(storage), sweep)
    for n, (trial_id, spec) in enumerate(TRIALS.items()):
        kind, method, beta, seed, fq, mu, rouge, prob, truth, retain_prob = spec
        final = {
            "forget_quality": fq,
            "model_utility": mu,
            "forget_rouge": rouge,
            "forget_prob": prob,
            "forget_truth_ratio": truth,
        }
        for split in UTILITY_SPLITS:
            for suffix in ("prob", "rouge", "truth_ratio"):
                final[f"{split}_{suffix}"] = mu
        final["retain_prob"] = retain_prob
        metrics = [
            {"sweep": sweep, "trial_id": trial_id, "stage": "final", "metric": k, "value": v}
            for k, v in final.items()
        ]
        if kind == "trial":
            metrics += _epochs(sweep, trial_id, 3, offset=float(n))
        checkpoint = run_dir / "checkpoints" / trial_id
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text(json.dumps({"trial": trial_id}))
        row = _trial_row(
            sweep,
            trial_id,
            run_dir,
            kind=kind,
            method=method,
            beta=beta,
            seed=seed,
            status="completed",
            forget_quality=fq,
            model_utility=mu,
        )
        weights = _weights(sweep, trial_id, method) if kind == "trial" else None
        write_trial_results(
            root,
            trial_id,
            trials=[row],
            metrics=metrics,
            examples=_examples(sweep, trial_id),
            weights=weights,
        )
    row = _trial_row(
        sweep,
        FAILED,
        run_dir,
        kind="trial",
        method="simnpo",
        beta=8.0,
        seed=0,
        status="failed",
        error="training diverged: loss is nan",
        checkpoint=None,
    )
    write_trial_results(root, FAILED, trials=[row], metrics=_epochs(sweep, FAILED, 1, offset=20.0))
    return run_dir


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture sweep written once per session (tests must not modify it)."""
    return write_run(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`make_run(sweep)`: a fresh copy of the fixture sweep under a new storage folder."""
    return lambda sweep: write_run(tmp_path_factory.mktemp("storage"), sweep)
