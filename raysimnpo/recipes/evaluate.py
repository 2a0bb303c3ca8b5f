"""Evaluating a model: the benchmark's evaluation of a finished run (`evaluate`), what a stored
evaluation depends on (`evaluation_key`), writing its per-example rows (`write_examples`), and the
per-epoch evaluation of a run (`EpochEvaluator`, with the epoch folders it keeps: `epoch_checkpoint`).

What is measured is the benchmark's (`ws.benchmark`: its items, scores and metrics); what of
Retrain's evaluation the others are measured against comes from the prepared Retrain
(`recipes.prepare.retrain_reference`) and is passed in, so this module needs only the workspace.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from transformers import PreTrainedModel

from ..benchmarks import base
from ..benchmarks.base import Evaluation
from ..benchmarks.registry import benchmark
from ..config.base import content_hash
from ..config.run import RunSettings
from ..results import EPOCH_MARK, write_parquet
from ..training import sharding
from .workspace import Workspace


def write_examples(examples: list[dict[str, Any]], path: Path) -> None:
    write_parquet(pa.Table.from_pylist(examples), path)


def evaluate(ws: Workspace, model: PreTrainedModel, retrain_reference: Any | None) -> Evaluation:
    """The benchmark's evaluation of `model`. `retrain_reference` (`retrain_reference`): what of
    Retrain's evaluation it is measured against; None when `model` is Retrain itself."""
    return base.evaluate(ws.benchmark, model, ws, retrain_reference)


def evaluation_key(config: RunSettings) -> str:
    """What a prepared model's stored evaluation depends on besides its weights."""
    return content_hash(
        "evaluation",
        config.evaluation,
        *benchmark(config.benchmark).cache_key_parts(config, "evaluation"),
        str(config.prepare.max_length),
    )


def epoch_checkpoint(checkpoint: str | Path, epoch: int) -> str:
    """A kept epoch's weights sit beside the run's final checkpoint: `<checkpoint>.epoch-<e>`, the
    folder the results' epoch candidate of that epoch points to (`results.epoch_candidates`)."""
    return f"{checkpoint}{EPOCH_MARK}{epoch}"


@dataclass
class EpochEvaluator:
    """Per-epoch evaluation (`evaluation.every_epoch`), an `after_epoch` of `unlearn_model`: after
    every epoch the model is evaluated as a finished run's would be (the benchmark's items, scores
    and metrics), so each (trial, epoch) is a point of the front. Under FSDP every rank calls it with
    its shards (the forward passes are collectives; the numbers are the same on every rank).

    Weights: with `keep` set, an epoch's weights are written to `<keep>.epoch-<e>` when its point is
    not dominated by another epoch of the run in the `objectives` (only those can still be selected:
    an epoch another epoch dominates is never the better choice under the front or Table 2's rule),
    and the folders of epochs it dominates are removed, so a 7B sweep keeps a few copies per trial,
    not one per epoch. `last` is the latest evaluation (the run's final one when it ends)."""

    ws: Workspace
    retrain_reference: Any
    objectives: Sequence[tuple[str, str]]
    keep: Path | None = None
    last: Evaluation | None = None
    points: dict[int, list[float]] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def __call__(self, model: PreTrainedModel, epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        bench = self.ws.benchmark
        stats = bench.score_items(model, self.ws, bench.evaluation_items(self.ws))
        self.last = bench.aggregate(self.ws, stats, self.retrain_reference)
        if self.keep is not None:
            self._keep(model, epoch, [float(self.last.metrics[m]) for m, _ in self.objectives])
        self.seconds += time.perf_counter() - started
        # `evaluated_at` (unix seconds): when the point existed, e.g. to draw a front against time
        return {**{k: float(v) for k, v in self.last.metrics.items()}, "evaluated_at": time.time()}

    def _keep(self, model: PreTrainedModel, epoch: int, point: list[float]) -> None:
        import math

        from ..maths.pareto import non_dominated_mask

        assert self.keep is not None
        self.points[epoch] = point
        epochs = sorted(self.points)
        values = [self.points[e] for e in epochs]
        if any(not math.isfinite(v) for p in values for v in p):
            front = set(epochs)  # no order on a NaN: keep everything
        else:
            mask = non_dominated_mask(values, [d for _, d in self.objectives])  # type: ignore[misc]
            front = {e for e, keep in zip(epochs, mask, strict=True) if keep}
        if epoch in front:
            sharding.save_hf_checkpoint(
                model, self.ws.tokenizer, self.ws.prompt_format, epoch_checkpoint(self.keep, epoch)
            )
            self.kept.append(epoch)
        rank, _ = sharding.rank_and_world_size()
        for dropped in [e for e in self.kept if e not in front]:
            self.kept.remove(dropped)
            if rank == 0:
                shutil.rmtree(epoch_checkpoint(self.keep, dropped), ignore_errors=True)

    def final_checkpoint(self, checkpoint: Path, epoch: int) -> bool:
        """Move the kept folder of `epoch` (the run's last) to `checkpoint`, the run's final model,
        instead of writing the same weights again; False when that epoch was not kept."""
        if self.keep is None or epoch not in self.kept:
            return False
        self.kept.remove(epoch)
        rank, _ = sharding.rank_and_world_size()
        if rank == 0:
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            Path(epoch_checkpoint(self.keep, epoch)).rename(checkpoint)
        return True
