"""Preparing the Original (fine-tuned on all data) and Retrain (on the retain data only) models,
each fine-tuned once and cached, or a released model used as it is (`as_is_model`).

`prepare` makes both in process; the sweep's prepare stage makes them on workers, where every
TorchTrainer rank calls the one fine-tuning step, `finetune_weights` (`fine_tunes` lists the jobs,
`prepare_one` makes one on its own). With `evaluation.noise_ceiling`, a second Retrain from seed + 1
gives the forget quality a perfect unlearner would get (`noise_ceiling`).

Prepared models are cached under `<cache_dir>/prepared/<content hash>/` by what produced them (data
source, model, fine-tuning recipe, seed, and for Retrain the forget split), each as a Hugging Face
folder (safetensors) with its evaluation: `metrics.json` and `examples.parquet`. What of Retrain's
evaluation the others are measured against is `retrain_reference`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from transformers import PreTrainedModel

from ..benchmarks.base import Evaluation, Role, TrainingKind
from ..benchmarks.registry import benchmark
from ..config.base import content_hash
from ..config.run import RunSettings
from ..errors import UserInputError, first_line
from ..maths.metrics import NOISE_CEILING
from ..training import sharding
from ..training.loop import TrainingSummary, train
from ..training.precision import loaded_dtype
from .evaluate import evaluate, evaluation_key, write_examples
from .workspace import (
    Log,
    Workspace,
    initial_model,
    load_prepared_model,
    quiet,
    resolve_device,
    save_model,
    training_examples,
)


@dataclass
class PreparedModel:
    path: Path
    metrics: dict[str, float]
    examples: list[dict[str, Any]]

    def forget_truth_ratios(self) -> Any:
        import numpy as np

        return np.array([e["truth_ratio"] for e in self.examples if e["split"] == "forget"], dtype=np.float64)


@dataclass
class Prepared:
    original: PreparedModel
    retrain: PreparedModel | None  # None: the benchmark has no Retrain (WMDP's released Original)


def original_key(config: RunSettings) -> str:
    return content_hash("original", *benchmark(config.benchmark).cache_key_parts(config, "original"))


def retrain_key(config: RunSettings) -> str:
    return content_hash(
        original_key(config), "retrain", *benchmark(config.benchmark).cache_key_parts(config, "retrain")
    )


def retrain_reference(ws: Workspace, retrain: PreparedModel | None) -> Any | None:
    """What of Retrain's evaluation the other models are measured against (the benchmark's: TOFU's
    forget truth ratios for forget quality, MUSE's AUC for PrivLeak, nothing for WMDP)."""
    if retrain is None:
        return None
    return ws.benchmark.retrain_reference(Evaluation(retrain.metrics, retrain.examples))


def as_is_model(config: RunSettings, name: str) -> str | None:
    """The released model to use as the prepared `name` (Original / Retrain) instead of fine-tuning."""
    role: Role = "original" if name == "Original" else "retrain"
    return benchmark(config.benchmark).released_model(config, role)


def _finetune_and_store(
    ws: Workspace,
    name: str,
    final: Path,
    kind: TrainingKind,
    retrain_truth_ratios: Any | None,
    log: Log,
) -> PreparedModel:
    """Fine-tune (or reuse) one prepared model and evaluate it (or reuse the evaluation).

    `final/model` holds the weights, keyed by what trained them; `final/eval-<key>/` holds an
    evaluation, keyed by the evaluation settings and forget split, so a new evaluation setting
    re-evaluates the cached weights instead of reusing stale numbers or retraining. Both are
    written to a temporary folder and renamed into place."""
    config = ws.config
    eval_dir = final / f"eval-{evaluation_key(config)}"
    if (eval_dir / "metrics.json").is_file():
        log(f"[prepare] {name}: cached at {final}")
        metrics = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
        examples = pq.read_table(eval_dir / "examples.parquet").to_pylist()
        return PreparedModel(final / "model", metrics, examples)
    final.mkdir(parents=True, exist_ok=True)
    released = as_is_model(config, name)
    if (final / "model" / "config.json").is_file():
        log(f"[prepare] {name}: weights cached at {final}; evaluating")
        model = load_prepared_model(final / "model", config)
    elif released is not None:
        # A released model (MUSE's target/retrain, WMDP's Zephyr) is the prepared model as it is; it is
        # saved with the run's tokenizer, since some releases ship weights only.
        from transformers import AutoModelForCausalLM

        from ..models import resolve_dtype

        log(f"[prepare] {name}: using {released} as it is")
        try:
            model = AutoModelForCausalLM.from_pretrained(released, dtype=resolve_dtype(config.model.dtype))
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            raise UserInputError(
                f"{config.benchmark}: could not load the released {name} {released!r} ({first})"
            ) from exc
        model = model.to(resolve_device(config))
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=final))
        save_model(model, ws.tokenizer, ws.prompt_format, staging)
        staging.rename(final / "model")
    else:
        model, _ = finetune_weights(ws, name, final, kind, log)
    evaluation = evaluate(ws, model, retrain_truth_ratios)
    staging = Path(tempfile.mkdtemp(prefix=".eval-", dir=final))
    write_examples(evaluation.examples, staging / "examples.parquet")
    (staging / "metrics.json").write_text(json.dumps({"name": name, "metrics": evaluation.metrics}))
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    staging.rename(eval_dir)
    shown = " ".join(f"{k} {evaluation.metrics[k]:.3g}" for k in ws.benchmark.headline_metrics)
    log(f"[prepare] {name}: {shown}")
    return PreparedModel(final / "model", evaluation.metrics, evaluation.examples)


def finetune_weights(
    ws: Workspace, name: str, final: Path, kind: TrainingKind, log: Log = quiet
) -> tuple[PreTrainedModel, TrainingSummary]:
    """Fine-tune one prepared model from the initial weights and write it to `final/model`.

    The one fine-tuning step of prepare: the in-process prepare calls it, and so does every rank of
    a TorchTrainer (`orchestration.trainer.finetune_with_torch_trainer`). Under several ranks the
    model is sharded with FSDP2 and `training.train` walks the same global batches on every rank, so
    the weights equal a single process's; rank 0 writes the folder (`sharding.save_hf_checkpoint`:
    written aside and renamed, in the dtype the model was loaded in), with `training.json` (the
    per-epoch rows, seconds, world size). Returns the model (sharded under several ranks) and its
    training summary."""
    config = ws.config
    rank, world_size = sharding.rank_and_world_size()
    examples = training_examples(ws, kind)
    check_finetune_batches(ws, kind, world_size)
    model = initial_model(config, ws.benchmark.corpus(ws.data)).model.to(resolve_device(config))
    dtype = loaded_dtype(model)
    unit = ws.benchmark.training_unit
    shown = log if rank == 0 else quiet
    on = f" on {world_size} workers" if world_size > 1 else ""
    shown(f"[prepare] {name}: fine-tuning on {len(examples)} {unit} for {config.prepare.epochs} epochs{on}")

    def show(row: dict[str, Any]) -> None:
        shown(f"[prepare] {name} epoch {row['epoch']}/{config.prepare.epochs} loss {row['loss']:.4f}")

    if world_size > 1:
        sharding.shard_model(model)
    summary = train(
        model,
        config.prepare,
        pad_id=ws.pad_id,
        seed=config.seed,
        examples=examples,
        report=show,
        rank=rank,
        world_size=world_size,
    )
    record = {"epochs": summary.epochs, "seconds": summary.seconds, "workers": world_size}
    sharding.save_hf_checkpoint(
        model,
        ws.tokenizer,
        ws.prompt_format,
        final / "model",
        dtype=dtype,
        extra_files={"training.json": json.dumps(record)},
    )
    return model, summary


def check_finetune_batches(ws: Workspace, kind: TrainingKind, world_size: int) -> None:
    """Fine-tuning on `world_size` ranks: every rank must take a non-empty slice of every global batch
    (FSDP steps are collectives), so `prepare.batch_size` must be at least `world_size` and the
    `kind` examples' last batch must hold 0 or at least `world_size` (a smaller one would be left out,
    and the weights would differ from a single process's). One UserInputError line each."""
    if world_size <= 1:
        return
    batch = ws.config.prepare.batch_size
    if batch < world_size:
        raise UserInputError(
            f"prepare.batch_size: {batch} cannot be split over {world_size} workers; allowed: >= {world_size}"
        )
    n = len(training_examples(ws, kind))
    rest = n % batch
    if 0 < rest < world_size:
        raise UserInputError(
            f"prepare.batch_size: {batch} leaves the {kind} set's {n} examples a last batch of {rest} for "
            f"{world_size} workers; allowed: a batch size that leaves 0 or at least {world_size} examples"
        )


@dataclass(frozen=True)
class FineTune:
    """A model `prepare` fine-tunes: its name, its folder (`<root>/<role>-<content hash>`), what it
    trains on, and the seed of its initial weights and batch order."""

    name: str
    folder: Path
    kind: TrainingKind
    seed: int


def fine_tunes(config: RunSettings, root: Path | None = None) -> list[FineTune]:
    """The models `prepare` fine-tunes (whether or not their weights are made already), in its order:
    Retrain (when the benchmark has one), the Original, and with `evaluation.noise_ceiling` the
    second Retrain of `noise_ceiling`. Released models, used as they are, are not among them."""
    original_dir, retrain_dir = prepared_dirs(config, root)
    jobs = []
    retrain = benchmark(config.benchmark).has_retrain(config) and as_is_model(config, "Retrain") is None
    if retrain:
        jobs.append(FineTune("Retrain", retrain_dir, "retrain", config.seed))
    if as_is_model(config, "Original") is None:
        jobs.append(FineTune("Original", original_dir, "original", config.seed))
    if retrain and config.evaluation.noise_ceiling:
        second_seed = second_retrain_config(config).seed
        jobs.append(FineTune(SECOND_RETRAIN, second_retrain_dir(config, root), "retrain", second_seed))
    return jobs


def prepare_one(ws: Workspace, name: str, root: Path | None = None, log: Log = quiet) -> None:
    """Make one prepared model (`name`: Original or Retrain) on its own, so that the two can be made
    at the same time: Retrain is fine-tuned and evaluated (its evaluation needs no other model);
    the Original is only fine-tuned, since its evaluation (forget quality, PrivLeak) is measured
    against Retrain's (`prepare` evaluates it, reusing these weights). A model with weights already
    in place, or a released model used as it is, is left to `prepare`."""
    original_dir, retrain_dir = prepared_dirs(ws.config, root)
    final = retrain_dir if name == "Retrain" else original_dir
    if (final / "model" / "config.json").is_file() or as_is_model(ws.config, name) is not None:
        return
    if name == "Retrain" and not ws.benchmark.has_retrain(ws.config):
        return
    final.mkdir(parents=True, exist_ok=True)
    if name == "Retrain":
        _finetune_and_store(ws, name, final, "retrain", None, log)
    else:
        finetune_weights(ws, name, final, "original", log)


def prepared_dirs(config: RunSettings, root: Path | None = None) -> tuple[Path, Path]:
    """Where Original and Retrain live: `<root>/<content hash>` (root: `<cache_dir>/prepared`)."""
    root = Path(config.cache_dir) / "prepared" if root is None else root
    return root / f"original-{original_key(config)}", root / f"retrain-{retrain_key(config)}"


def prepared_folders(config: RunSettings, root: Path | None = None) -> list[Path]:
    """Every folder `prepare` reads or writes under `root`: the Original's, Retrain's and, with
    `evaluation.noise_ceiling`, the second Retrain's (`noise_ceiling`)."""
    folders = list(prepared_dirs(config, root))
    if config.evaluation.noise_ceiling and benchmark(config.benchmark).has_retrain(config):
        folders.append(second_retrain_dir(config, root))
    return folders


def prepare(ws: Workspace, log: Log = quiet, root: Path | None = None) -> Prepared:
    """Fine-tune Retrain (on retainXX, or the retain texts) first, so the Original can be measured
    against it (TOFU's forget quality, MUSE's PrivLeak); both are cached by content hash. A benchmark
    may have no Retrain (WMDP with a released Original used as it is)."""
    original_dir, retrain_dir = prepared_dirs(ws.config, root)
    retrain = None
    if ws.benchmark.has_retrain(ws.config):
        retrain = _finetune_and_store(ws, "Retrain", retrain_dir, "retrain", None, log)
    original = _finetune_and_store(
        ws, "Original", original_dir, "original", retrain_reference(ws, retrain), log
    )
    if retrain is not None and ws.config.evaluation.noise_ceiling:
        retrain.metrics[NOISE_CEILING] = noise_ceiling(ws, retrain, root, log)
    return Prepared(original=original, retrain=retrain)


SECOND_RETRAIN = "Retrain (seed + 1)"


def second_retrain_config(config: RunSettings) -> RunSettings:
    """The run the noise ceiling's second Retrain is fine-tuned for: the same, from seed + 1."""
    return config.model_copy(update={"seed": config.seed + 1})


def second_retrain_dir(config: RunSettings, root: Path | None = None) -> Path:
    """Where the noise ceiling's second Retrain lives: Retrain's folder of `second_retrain_config`."""
    return prepared_dirs(second_retrain_config(config), root)[1]


def noise_ceiling(ws: Workspace, retrain: PreparedModel, root: Path | None, log: Log) -> float:
    """Forget quality of a second Retrain, fine-tuned like the first from seed + 1 (its initial
    weights and batch order; the same data and tokenizer), measured against the first: the FQ a
    perfect unlearner would get, so a gap to it can be told from the KS test's noise. Cached like
    every prepared model."""
    other = second_retrain_config(ws.config)
    second_dir = second_retrain_dir(ws.config, root)
    second = _finetune_and_store(
        ws.for_run(other), SECOND_RETRAIN, second_dir, "retrain", retrain_reference(ws, retrain), log
    )
    value = float(second.metrics["forget_quality"])
    log(f"[prepare] noise ceiling: FQ of a second Retrain against Retrain {value:.3g}")
    return value
