"""TOFU evaluation of one checkpoint: Ray Data actors vs in-process (issue 8, item 2).

The two engines a sweep trial can evaluate with (`evaluation.engine`), on the same saved model folder
(the default sweep's Original, prepared and cached by `sweep_overhead.py` or a sweep under
`--storage`), the default run's data and evaluation settings (forget10, all four splits, every metric):

* `ray_data`: `orchestration.eval_pipeline.evaluate_with_ray_data` — the rows go through
  `map_batches` to one `ExampleScorer` actor (as a CPU trial runs it: one actor, the trial's threads),
  which starts a Ray worker process, imports torch/transformers, loads the folder and scores;
  measured from the call to the last row, split into the actor's load, its batches, and the rest
  (Ray Data planning, actor start-up and imports);
* `in_process`: load the folder in this process (`recipes.workspace.load_prepared_model`) and
  `recipes.evaluate.evaluate`; and `in_memory`: `recipes.evaluate.evaluate` on the model already loaded
  (what `engine: auto` does in a trial that unlearned on CPU: no load at all).

Rounds alternate the order. The per-example statistics of both engines give metrics that must agree
to 1e-5 (`evaluation.tofu_metrics` on each engine's examples).

    .venv/bin/python perf/eval_engines.py [--rounds 3] [--threads 1] [--storage /tmp/raysimnpo-sweep-overhead]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import harness
import numpy as np
import pyarrow.parquet as pq

from raysimnpo.benchmarks.tofu_evaluation import tofu_metrics
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.recipes.evaluate import evaluate, evaluation_key
from raysimnpo.recipes.prepare import PreparedModel, prepared_dirs
from raysimnpo.recipes.workspace import load_prepared_model, workspace

NAME = "eval_engines"
TOLERANCE = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a sweep trial: cpus_per_worker)"
    )
    parser.add_argument("--storage", default="/tmp/raysimnpo-sweep-overhead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    harness.set_threads(args.threads)
    machine = harness.machine()

    import ray

    harness.start_ray()
    from raysimnpo.orchestration.eval_pipeline import evaluate_with_ray_data

    sweep = load_sweep_config("tofu", [f"storage={args.storage}", *args.overrides])
    run = sweep.run
    original, retrain = prepared_dirs(run, Path(args.storage) / "prepared")
    if not (original / "model" / "config.json").is_file():
        raise SystemExit(f"no prepared Original at {original}; run perf/sweep_overhead.py first")
    ws = workspace(run)
    retrain_eval = retrain / f"eval-{evaluation_key(run)}" / "examples.parquet"
    retrain_ratios = PreparedModel(retrain, {}, pq.read_table(retrain_eval).to_pylist()).forget_truth_ratios()
    folder = original / "model"
    memory_model = load_prepared_model(folder, run)

    def ray_data() -> tuple[list[dict[str, Any]], dict[str, float]]:
        timings: dict[str, float] = {}
        stats = evaluate_with_ray_data(
            str(folder),
            ws,
            num_actors=1,
            num_cpus=0,
            threads=args.threads,
            timings=timings,
        )
        return stats, timings

    def in_process() -> tuple[list[dict[str, Any]], dict[str, float]]:
        load, model = harness.timed(lambda: load_prepared_model(folder, run))
        took, evaluation = harness.timed(lambda: evaluate(ws, model, None))
        return evaluation.examples, {"load_checkpoint": load, "evaluate": took}

    def in_memory() -> tuple[list[dict[str, Any]], dict[str, float]]:
        took, evaluation = harness.timed(lambda: evaluate(ws, memory_model, None))
        return evaluation.examples, {"load_checkpoint": 0.0, "evaluate": took}

    engines = {"ray_data": ray_data, "in_process": in_process, "in_memory": in_memory}
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    ratios: dict[str, list[float]] = {"ray_data / in_process": [], "ray_data / in_memory": []}
    metrics: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        names = list(engines)
        order = names[r % len(names) :] + names[: r % len(names)]
        this_round: dict[str, float] = {}
        for name in order:
            took, (stats, parts) = harness.timed(engines[name])
            parts = {**parts, "rest (Ray Data, actor start, imports)": took - sum(parts.values())}
            this_round[name] = took
            seconds[name].append(took)
            phases[name].append(parts)
            metrics[name], _ = tofu_metrics(stats, ws.data.eval_splits, retrain_ratios)
            print(f"round {r + 1} {name}: {took:.2f} s {parts}", flush=True)
        ratios["ray_data / in_process"].append(this_round["ray_data"] / this_round["in_process"])
        ratios["ray_data / in_memory"].append(this_round["ray_data"] / this_round["in_memory"])

    parts_names = ["load_checkpoint", "evaluate", "rest (Ray Data, actor start, imports)"]
    rows = [
        [
            name,
            harness.median(seconds[name]),
            *[float(np.mean([p.get(k, 0.0) for p in phases[name]])) for k in parts_names],
            harness.median(seconds[name]) / harness.median(seconds["in_memory"]),
        ]
        for name in engines
    ]
    print(
        harness.markdown_table(
            ["engine", "total s (median)", *[f"{k} s" for k in parts_names], "/ in_memory"], rows
        )
    )
    diffs = {
        key: max(abs(metrics[name][key] - metrics["in_process"][key]) for name in engines)
        for key in metrics["in_process"]
    }
    worst = max(diffs.values())
    print(f"max |metric difference| across engines: {worst:.2e} (tolerance {TOLERANCE:g})")
    for key, value in ratios.items():
        print(f"{key}: median {harness.median(value):.2f}x, per round {[round(v, 2) for v in value]}")
    path = harness.write_result(
        NAME,
        {
            "machine": machine,
            "load_average_end": harness.machine()["load_average"],
            "threads": args.threads,
            "model_folder": str(folder),
            "seconds": seconds,
            "phases": phases,
            "ratios": ratios,
            "median_ratios": {k: harness.median(v) for k, v in ratios.items()},
            "metrics": metrics,
            "max_abs_metric_diff": worst,
            "metric_diffs": diffs,
            "identical_within_tolerance": worst <= TOLERANCE,
        },
    )
    print(f"wrote {path}")
    ray.shutdown()


if __name__ == "__main__":
    main()
