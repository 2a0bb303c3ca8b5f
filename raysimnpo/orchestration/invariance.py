"""Same numbers at any worker count: one trial config and seed run as (a) a single process, (b) one
TorchTrainer worker and (c) two FSDP2 TorchTrainer workers (DESIGN §2 "One path", §7).

Every run calls the one unlearning recipe (`recipes.unlearn.unlearn_model`) for each method in turn and
records, per method: the forget indices of every global batch, the per-epoch losses, the final
weights (gathered on rank 0) and the TOFU evaluation of those weights (forget quality, model utility
and every forget example's truth ratio), measured on rank 0 with the unsharded model. `compare`
gives, per method and run, the largest difference to the single process. One TorchTrainer start per
world size runs all the methods (a start costs ~40 s on 2 cores).

Used by tests/orchestration/test_invariance.py (CI, gloo, tiny model) and perf/invariance.py
(the table). On GPUs (NCCL) the workers compute in bf16 over float32 master weights, so (b) and (c)
differ from (a) by the size that script reports.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from ray.train.v2.api.config import RunConfig as TrainRunConfig
from ray.train.v2.api.config import ScalingConfig
from ray.train.v2.api.result import Result
from ray.train.v2.torch.torch_trainer import TorchTrainer

from ..config.base import EvalSettings, TrainSettings
from ..config.run import DataSettings, ModelSettings, RunSettings
from ..data.generators.tofu import TofuGeneratorConfig
from ..data.sources import TofuSource
from ..methods import GradDiffParams, MethodParams, NPOParams, RMUParams, SimNPOParams
from ..models import TinyModelConfig
from ..recipes.evaluate import evaluate
from ..recipes.unlearn import unlearn_model
from ..recipes.workspace import initial_model, load_prepared_model, save_model, training_examples, workspace
from ..training import sharding
from ..training.loop import train

RUNS = ("single_process", "one_worker", "two_workers")
METHOD_PARAMS: dict[str, MethodParams] = {
    # Small β: on a barely trained tiny model ℓ/|y| ≈ log V and a paper-sized β would stall the forget term.
    "simnpo": SimNPOParams(beta=0.1, retain_weight=0.5),
    "npo": NPOParams(beta=0.1, retain_weight=0.5),
    "grad_diff_kl": GradDiffParams(retain_weight=1.0, retain_loss="kl"),
    "rmu": RMUParams(steering_coeff=2.0, retain_weight=10.0),
}
TINY = TinyModelConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    vocab_size=300,
)


def case_config(cache_dir: Path, seed: int = 3) -> RunSettings:
    """forget10 of the small generated TOFU set (6 forget, 54 retain QA), batches of 4, so the last
    forget and retain batches of an epoch hold 2 examples: one per rank with two workers. Evaluation
    generates for 4 questions per split (ROUGE-L enters model utility)."""
    return RunSettings(
        seed=seed,
        device="cpu",
        cache_dir=str(cache_dir),
        data=DataSettings(source=TofuSource(kind="generated", generator=TofuGeneratorConfig.preset("small"))),
        model=ModelSettings(name="tiny", dtype="float32", tiny=TINY),
        unlearn=TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, warmup_epochs=0.0),
        evaluation=EvalSettings(batch_size=32, max_new_tokens=16, generation_limit=4, engine="in_process"),
    )


def prepare_case(workdir: Path) -> tuple[RunSettings, Path, list[float]]:
    """The case's config, an Original folder (the seeded tiny model, briefly fine-tuned on the full
    set so the losses are not those of a random model) and the reference forget truth ratios that
    forget quality is measured against (the Original's own: any fixed reference serves here)."""
    config = case_config(workdir / "cache")
    ws = workspace(config)
    model = initial_model(config, ws.data.corpus()).model
    train(
        model,
        TrainSettings(epochs=12, batch_size=16, learning_rate=3e-3, warmup_epochs=0.0),
        pad_id=ws.pad_id,
        seed=config.seed,
        examples=training_examples(ws, "original"),
    )
    original = workdir / "original"
    save_model(model, ws.tokenizer, ws.prompt_format, original)
    reference = evaluate(ws, model, None)
    ratios = [e["truth_ratio"] for e in reference.examples if e["split"] == "forget"]
    return config, original, ratios


def run_methods(
    config_json: str, original: str, reference_ratios: list[float], methods: list[str]
) -> dict[str, dict[str, Any]]:
    """Unlearn the Original with each method through `recipes.unlearn.unlearn_model` on this rank (all ranks
    of a torch.distributed group call it); rank 0 returns, per method, {"batches": the sorted
    forget indices of every step, "losses": the per-epoch loss rows, "weights": the final full state
    dict as numpy arrays, "metrics": every TOFU metric (forget quality, model utility and its 9
    parts, ...), "truth_ratios": the forget
    examples'}. Other ranks return {}."""
    config = RunSettings.model_validate_json(config_json)
    ws = workspace(config)
    rank, _ = sharding.rank_and_world_size()
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        batches: list[list[int]] = []
        epochs: list[dict[str, float]] = []
        model, _ = unlearn_model(
            ws,
            original,
            METHOD_PARAMS[name],
            epochs.append,
            on_forget_batch=lambda _epoch, index, _terms, seen=batches: seen.append(sorted(index)),
        )
        state = sharding.full_state_dict(model)  # a collective: every rank calls it
        if rank != 0:
            continue
        assert state is not None
        plain = load_prepared_model(Path(original), config)
        plain.load_state_dict(state)
        evaluation = evaluate(ws, plain, np.asarray(reference_ratios, dtype=np.float64))
        out[name] = {
            "batches": batches,
            "losses": [{k: float(v) for k, v in row.items()} for row in epochs],
            "weights": {k: v.float().numpy() for k, v in state.items()},
            "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
            "truth_ratios": [e["truth_ratio"] for e in evaluation.examples if e["split"] == "forget"],
        }
    return out


def _worker(loop_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    torch.set_num_threads(1)
    return run_methods(
        loop_config["config"], loop_config["original"], loop_config["reference"], loop_config["methods"]
    )


def run_on_workers(
    config: RunSettings, original: Path, reference_ratios: list[float], methods: list[str], num_workers: int
) -> dict[str, dict[str, Any]]:
    """`run_methods` on `num_workers` Ray Train workers (gloo on CPU; FSDP2 when more than one);
    rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="raysimnpo-invariance-") as storage:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "config": config.model_dump_json(),
                "original": str(original),
                "reference": reference_ratios,
                "methods": methods,
            },
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False),
            run_config=TrainRunConfig(name=f"invariance-{num_workers}", storage_path=storage),
        )
        result = cast(Result, trainer.fit())
    return cast(dict[str, dict[str, Any]], result.return_value)


UTILITY_METRICS = (
    "model_utility",
    *(
        f"{s}_{m}"
        for s in ("retain", "real_authors", "world_facts")
        for m in ("prob", "rouge", "truth_ratio")
    ),
)


def max_relative(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))) if x.size else 0.0


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """How far a run's results for one method are from the single process's: whether the batches are
    equal, the largest relative difference of the per-epoch losses (loss, forget and retain terms),
    the largest absolute weight difference, and the largest relative difference of forget quality,
    model utility (with its parts) and the per-example forget truth ratios."""
    loss_keys = ("loss", "forget_loss", "retain_loss")
    return {
        "same_batches": reference["batches"] == other["batches"],
        "losses": max(
            max_relative([r[k] for r in other["losses"]], [r[k] for r in reference["losses"]])
            for k in loss_keys
        ),
        "weights": max(
            float(np.max(np.abs(other["weights"][k] - v))) for k, v in reference["weights"].items()
        ),
        "forget_quality": max_relative(
            other["metrics"]["forget_quality"], reference["metrics"]["forget_quality"]
        ),
        "model_utility": max_relative(
            other["metrics"]["model_utility"], reference["metrics"]["model_utility"]
        ),
        "truth_ratios": max_relative(other["truth_ratios"], reference["truth_ratios"]),
    }
