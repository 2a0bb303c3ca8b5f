"""Ray Data scoring: rows stream through actors that load a model once.

Evaluation: each row is one evaluation item of the run's benchmark (`Benchmark.evaluation_items`: a
TOFU question, a MUSE text or question, a WMDP question); `ExampleScorer` turns a batch of items into
per-example rows with `Benchmark.score_items` (the same code as the in-process path), and the caller
computes the metrics from the collected rows (`Benchmark.aggregate`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from ..cache import default_cache_dir
from ..data.formatting import EncodedExample
from ..models import load_model_and_tokenizer
from ..results.storage import local_copy
from ..training.scoring import score_sequences


class ExampleScorer:
    """Loads a saved model folder once; each call scores a batch of evaluation items with the
    benchmark's `score_items` (the same code as the in-process evaluation)."""

    def __init__(self, model_path: str, workspace: Any, threads: int) -> None:
        import torch

        started = time.perf_counter()
        if threads > 0:
            torch.set_num_threads(threads)
        loaded = load_model_and_tokenizer(
            str(local_copy(model_path, default_cache_dir())), cache_dir=default_cache_dir()
        )
        self.model = loaded.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.ws = ray.get(workspace) if isinstance(workspace, ray.ObjectRef) else workspace
        # Reported once, with this actor's first batch (see `evaluate_with_ray_data`'s timings).
        self.load_seconds: float | None = time.perf_counter() - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        items = [json.loads(item) for item in batch["item"]]
        stats = self.ws.benchmark.score_items(self.model, self.ws, items)
        out = [json.dumps(example) for example in stats]
        # The batch's wall time and (first batch only) the model load, on the batch's first row.
        timing = [""] * len(out)
        timing[0] = json.dumps(
            {"evaluate": time.perf_counter() - started, "load_checkpoint": self.load_seconds or 0.0}
        )
        self.load_seconds = None
        return {"example": np.array(out, dtype=object), "timing": np.array(timing, dtype=object)}


def evaluate_with_ray_data(
    model_path: str,
    workspace: Any,
    *,
    num_actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int = 0,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Per-example rows of every evaluation item of the workspace's benchmark
    (`Benchmark.evaluation_items`), computed by a pool of `ExampleScorer` actors; the caller
    aggregates them (`Benchmark.aggregate`). `workspace`: a `recipes.workspace.Workspace` or its object ref.

    `timings`, when given, receives the actors' own seconds summed over actors: `load_checkpoint`
    (loading the model folder) and `evaluate` (scoring and generating the batches); the rest of the
    call's wall time is Ray Data's planning, the actor process start-up and its imports."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the sweep prints its own progress line
    context.print_on_execution_start = False
    ws = ray.get(workspace) if isinstance(workspace, ray.ObjectRef) else workspace
    rows = [{"item": json.dumps(item)} for item in ws.benchmark.evaluation_items(ws)]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, num_actors * 2)).map_batches(
        ExampleScorer,
        fn_constructor_args=(model_path, workspace, threads),
        batch_size=ws.config.evaluation.batch_size,
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    rows_out = dataset.take_all()
    if timings is not None:
        for row in rows_out:
            if row["timing"]:
                for name, seconds in json.loads(row["timing"]).items():
                    timings[name] = timings.get(name, 0.0) + float(seconds)
    return [json.loads(r["example"]) for r in rows_out]


class SequenceScorer:
    """Loads a saved model folder once; each call returns the summed answer NLL of encoded rows."""

    def __init__(self, model_path: str, batch_size: int, threads: int) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        loaded = load_model_and_tokenizer(
            str(local_copy(model_path, default_cache_dir())), cache_dir=default_cache_dir()
        )
        self.model = loaded.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        tok = loaded.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        examples = [
            EncodedExample(json.loads(ids), json.loads(labels))
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        ]
        nll, _ = score_sequences(self.model, examples, self.batch_size, self.pad_id)
        return {"kind": batch["kind"], "index": batch["index"], "nll": nll}


def reference_nll_with_ray_data(
    model_path: str,
    sets: dict[str, list[EncodedExample]],
    batch_size: int,
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """ℓ_ref of every example of each named set (NPO's forget answers, IdkDPO's refusals), scored
    once by the reference model in a Ray Data actor; returned per set in the original order."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [
        {"kind": kind, "index": i, "input_ids": json.dumps(e.input_ids), "labels": json.dumps(e.labels)}
        for kind, examples in sets.items()
        for i, e in enumerate(examples)
    ]
    scored = ray.data.from_items(rows).map_batches(
        SequenceScorer,
        fn_constructor_args=(model_path, batch_size, threads),
        batch_size=batch_size * 4,
        compute=ActorPoolStrategy(size=1),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    out = {kind: np.zeros(len(examples)) for kind, examples in sets.items()}
    for row in scored.take_all():
        out[str(row["kind"])][int(row["index"])] = float(row["nll"])
    return out
