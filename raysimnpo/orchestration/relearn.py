"""Relearning attacks on finished trials, streamed with Ray Data (DESIGN §7; paper Fig. A3).

One row per (unlearned checkpoint, attack, seed) goes through a pool of `RelearnAttacker` actors;
each actor builds the run's data and tokenizer once, and per row loads the checkpoint, relearns with
`raysimnpo.recipes.relearn.relearn` and returns one row per relearning epoch. The rows land in the
`relearn` results table, one file per attacked trial.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from .. import results
from ..config.run import RunSettings
from ..config.sweep import RelearnSettings, SweepConfig
from ..recipes import relearn as relearning
from ..recipes import workspace as workspaces
from ..results.storage import local_copy


class RelearnAttacker:
    """Holds a run's workspace; each call attacks the checkpoints of a batch of plan rows."""

    def __init__(
        self,
        run_json: str,
        settings_json: str,
        retrain_truth_ratios: list[float],
        threads: int,
        workspace: Any = None,
    ) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.run = RunSettings.model_validate_json(run_json)
        # The sweep's workspace from the object store when the caller has one; else built here.
        if isinstance(workspace, ray.ObjectRef):
            workspace = ray.get(workspace)
        self.ws = workspaces.workspace(self.run) if workspace is None else workspace.for_run(self.run)
        self.device = workspaces.resolve_device(self.run)
        self.settings = RelearnSettings.model_validate_json(settings_json)
        self.retrain = np.asarray(retrain_truth_ratios, dtype=np.float64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: list[dict[str, Any]] = []
        for plan in (json.loads(text) for text in batch["plan"]):
            checkpoint = local_copy(plan["checkpoint"], self.run.cache_dir)  # a local path or a URI
            model = workspaces.load_prepared_model(checkpoint, self.run).to(self.device)
            rows = relearning.relearn(
                self.ws, model, plan["attack"], plan["seed"], self.settings, self.retrain
            )
            identity = {k: plan[k] for k in ("sweep", "trial_id", "method")}
            out.extend({**identity, **row} for row in rows)
        return {"row": np.array([json.dumps(r) for r in out], dtype=object)}


def attack_plan(
    sweep: str, trials: Sequence[dict[str, Any]], settings: RelearnSettings
) -> list[dict[str, Any]]:
    """(trial, attack, seed) rows: shortest-relearn once (first seed), random-relearn once per seed."""
    plan = []
    for trial in trials:
        for attack in settings.attacks:
            for seed in settings.seeds[:1] if attack == "shortest" else settings.seeds:
                plan.append(
                    {
                        "sweep": sweep,
                        "trial_id": trial["trial_id"],
                        "method": trial["method"],
                        "checkpoint": trial["checkpoint"],
                        "attack": attack,
                        "seed": seed,
                    }
                )
    return plan


def actor_resources(sweep: SweepConfig) -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor): one process per attack, sized like one trial worker."""
    r = sweep.resources
    available = ray.cluster_resources()
    if r.gpus_per_worker > 0:
        return max(1, int(available.get("GPU", 0))), r.cpus_per_worker, 1.0
    return max(1, int(available.get("CPU", 1) // r.cpus_per_worker)), r.cpus_per_worker, 0.0


def run_relearn_attacks(
    sweep: SweepConfig,
    root: str,
    trials: Sequence[dict[str, Any]],
    retrain_truth_ratios: Sequence[float],
    log: Callable[[str], None],
    workspace: Any = None,
) -> list[dict[str, Any]]:
    """Attack every trial's checkpoint as `sweep.relearn` says (default: the paper's setting); write
    and return the `relearn` rows."""
    settings = sweep.relearn or RelearnSettings()
    plan = attack_plan(sweep.name, trials, settings)
    num_actors, num_cpus, num_gpus = actor_resources(sweep)
    num_actors = min(num_actors, len(plan))
    log(f"[relearn] {len(plan)} attacks on {len(trials)} trials with {num_actors} actor(s)")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    dataset = ray.data.from_items(
        [{"plan": json.dumps(p)} for p in plan], override_num_blocks=len(plan)
    ).map_batches(
        RelearnAttacker,
        fn_constructor_args=(
            sweep.run.model_dump_json(),
            settings.model_dump_json(),
            [float(r) for r in retrain_truth_ratios],
            max(1, int(num_cpus)),
            None if workspace is None else ray.put(workspace),
        ),
        batch_size=1,
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    by_trial: dict[str, list[dict[str, Any]]] = defaultdict(list)
    done = 0
    for item in dataset.iter_rows():
        row = json.loads(item["row"])
        by_trial[row["trial_id"]].append(row)
        if row["epoch"] == settings.epochs:
            done += 1
            log(
                f"[relearn] {done}/{len(plan)} {row['method']} {row['trial_id']} {row['attack']} "
                f"seed {row['seed']}: FQ after {settings.epochs} epochs {row['forget_quality']:.3g}"
            )
    for trial_id, rows in sorted(by_trial.items()):
        rows.sort(key=lambda r: (r["attack"], r["seed"], r["epoch"]))
        results.write_relearn_results(root, trial_id, rows)
    return [r for rows in by_trial.values() for r in rows]
