"""One Tune trial: build the trial's run -> unlearn -> evaluate -> write Parquet -> report.

Unlearning runs in the trial's own process when the trial has one CPU worker (Ray's per-trial
start-up would dwarf a tiny model's training on CPU), and on a TorchTrainer with FSDP2 workers
otherwise. Evaluation streams the evaluation questions through Ray Data actors that load the
unlearned checkpoint once, or runs in-process when `evaluation_engine` says so.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from ray import tune

from .. import recipe, results
from ..benchmarks.tofu import TofuRunData
from ..config import SweepConfig
from ..evaluation import tofu_metrics
from ..methods import CLOSED_FORM_WEIGHTS, MethodParams, StepTerms, gradient_weights
from ..training import TrainingDiverged

FLAT = ("beta", "gamma", "retain_weight", "alpha")


class TrialFailed(RuntimeError):
    """Raised after a failed trial's row is written, so Tune and Optuna record it as FAIL."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def trial_row(sweep: SweepConfig, trial_id: str, run: Any, **fields: Any) -> dict[str, Any]:
    method = run.method.model_dump()
    row = {
        "sweep": sweep.name,
        "trial_id": trial_id,
        "kind": "trial",
        "method": run.method.name,
        "params_json": json.dumps({"method": method, "unlearn": run.unlearn.model_dump()}, sort_keys=True),
        "learning_rate": run.unlearn.learning_rate,
        "epochs": run.unlearn.epochs,
        "batch_size": run.unlearn.batch_size,
        "seed": run.seed,
    }
    row.update({k: method.get(k) for k in FLAT})
    row.update(fields)
    return row


def metric_rows(
    sweep: str, trial_id: str, final: dict[str, float], epochs: list[dict[str, float]]
) -> list[dict]:
    rows = [
        {
            "sweep": sweep,
            "trial_id": trial_id,
            "stage": "final",
            "epoch": None,
            "metric": k,
            "value": float(v),
        }
        for k, v in final.items()
    ]
    for row in epochs:
        for k, v in row.items():
            if k != "epoch":
                rows.append(
                    {
                        "sweep": sweep,
                        "trial_id": trial_id,
                        "stage": "epoch",
                        "epoch": int(row["epoch"]),
                        "metric": k,
                        "value": float(v),
                    }
                )
    return rows


class WeightRecorder:
    """`training.train`'s on_forget_batch hook: one `weights` row per forget example and epoch, with
    its closed-form gradient weight (NPO eq. 3 / SimNPO eq. 5, `methods.gradient_weights`) and |y|."""

    def __init__(self, sweep: str, trial_id: str, params: MethodParams) -> None:
        self.sweep, self.trial_id, self.params = sweep, trial_id, params
        self.rows: list[dict[str, Any]] = []

    def __call__(self, epoch: int, index: list[int], terms: StepTerms) -> None:
        weights = gradient_weights(self.params, terms)
        if weights is None:
            return
        for i, w, n in zip(index, weights.tolist(), terms.forget_tokens.tolist(), strict=True):
            self.rows.append(
                {
                    "sweep": self.sweep,
                    "trial_id": self.trial_id,
                    "epoch": epoch,
                    "index": i,
                    "weight": w,
                    "answer_tokens": n,
                }
            )


def load_reference_nll(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return table["forget_nll"].to_numpy(), table["refusal_nll"].to_numpy()


def unlearning_trial(params: dict[str, Any], *, sweep_json: str, prepared_json: str) -> None:
    """The Tune function trainable (define-by-run params: `method` plus dotted run settings)."""
    sweep = SweepConfig.model_validate_json(sweep_json)
    prepared = json.loads(prepared_json)
    run = sweep.trial_run_config(params)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(prepared["run_dir"])
    root = results.results_root(str(run_dir.parent), sweep.name)
    started = now()
    threads = max(1, int(sweep.resources.cpus_per_worker))
    torch.set_num_threads(threads)

    ws = recipe.workspace(run)
    retrain_reference = prepared["retrain_reference"]
    retrain_ratios = np.array(retrain_reference, dtype=np.float64) if run.benchmark == "tofu" else None
    checkpoint = run_dir / "checkpoints" / trial_id
    epochs: list[dict[str, float]] = []
    # Weights are recorded when unlearning runs in this process (not on TorchTrainer workers).
    recorder = (
        WeightRecorder(sweep.name, trial_id, run.method) if run.method.name in CLOSED_FORM_WEIGHTS else None
    )
    try:
        t0 = time.perf_counter()
        if sweep.resources.workers > 1 or sweep.resources.gpus_per_worker > 0:
            from ..orchestration.trainer import unlearn_with_torch_trainer

            reference = load_reference_nll(Path(prepared["reference_nll"]))
            outcome = unlearn_with_torch_trainer(
                run,
                prepared["original"],
                str(checkpoint),
                num_workers=sweep.resources.workers,
                use_gpu=sweep.resources.gpus_per_worker > 0,
                reference_nll=None if reference is None else [r.tolist() for r in reference],
                storage_path=str(run_dir / "train"),
                name=trial_id,
                cpus_per_worker=sweep.resources.cpus_per_worker,
                gpus_per_worker=sweep.resources.gpus_per_worker,
            )
            epochs = outcome.get("epochs", [])
        else:
            reference = load_reference_nll(Path(prepared["reference_nll"]))
            model, summary = recipe.unlearn_model(
                ws,
                Path(prepared["original"]),
                report=epochs.append,
                reference_nll=reference,
                on_forget_batch=recorder,
            )
            recipe.save_model(model, ws.tokenizer, ws.prompt_format, checkpoint)
            del model
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        if run.benchmark != "tofu":
            # MUSE / WMDP evaluate in the trial (their generation and choice scoring have no Ray Data
            # pipeline yet); the per-example table goes next to the checkpoint.
            model = recipe.load_prepared_model(checkpoint, run)
            evaluation = recipe.evaluate(ws, model, retrain_reference)
            metrics, examples = evaluation.metrics, list[dict[str, Any]]()
            pq.write_table(pa.Table.from_pylist(evaluation.examples), checkpoint / "examples.parquet")
            del model
        elif run.evaluation.engine == "ray_data":
            from ..orchestration.eval_pipeline import evaluate_with_ray_data

            gpu = sweep.resources.gpus_per_worker > 0
            assert isinstance(ws.data, TofuRunData)
            stats = evaluate_with_ray_data(
                str(checkpoint),
                list(ws.data.eval_splits),
                run.evaluation,
                run.prepare.max_length,
                num_actors=sweep.resources.workers if gpu else 1,
                # In-process CPU trials lend their own CPU to the evaluation actor.
                num_cpus=0 if not gpu else sweep.resources.cpus_per_worker,
                num_gpus=1 if gpu else 0,
                threads=threads,
            )
        else:
            model = recipe.load_prepared_model(checkpoint, run)
            stats = recipe.evaluate(ws, model, None).examples
        if isinstance(ws.data, TofuRunData):
            metrics, examples = tofu_metrics(stats, ws.data.eval_splits, retrain_ratios)
        eval_seconds = time.perf_counter() - t1
    except TrainingDiverged as exc:
        row = trial_row(
            sweep,
            trial_id,
            run,
            status="failed",
            error=str(exc),
            started_at=started,
            finished_at=now(),
            checkpoint=None,
        )
        results.write_trial_results(
            root,
            trial_id,
            trials=[row],
            metrics=metric_rows(sweep.name, trial_id, {}, epochs),
            weights=None if recorder is None else recorder.rows,
        )
        raise TrialFailed(f"trial {trial_id} diverged: {exc}") from None

    row = trial_row(
        sweep,
        trial_id,
        run,
        status="completed",
        error=None,
        started_at=started,
        finished_at=now(),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        checkpoint=str(checkpoint),
        forget_quality=metrics.get("forget_quality"),
        model_utility=metrics.get("model_utility"),
    )
    example_rows = [dict(e, sweep=sweep.name, trial_id=trial_id) for e in examples]
    results.write_trial_results(
        root,
        trial_id,
        trials=[row],
        metrics=metric_rows(sweep.name, trial_id, metrics, epochs),
        examples=example_rows,
        weights=None if recorder is None else recorder.rows,
    )
    tune.report({**metrics, "completed": 1.0, "method": run.method.name})
