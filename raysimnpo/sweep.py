"""The main job: `python -m raysimnpo.sweep tofu [--set k=v] [--storage URI] [--resume]`.

Validates everything before Ray starts a trial (bad input: one line, exit code 2), starts or joins
a Ray cluster (RAY_ADDRESS or --address joins; otherwise a local Ray is started), prepares the
Original and Retrain models once, runs the Optuna-driven Tune trials, and prints the Pareto front
of the objectives with the paths of the result files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .config import SweepConfig, load_sweep_config
from .errors import UserInputError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raysimnpo.sweep", description=__doc__)
    parser.add_argument("sweep", help="a sweep name (tofu, tofu-llama2-7b, ...) or a sweep YAML file")
    parser.add_argument("--config", help="a sweep YAML file (overrides the name's file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--storage",
        help="where runs go: a local folder or a filesystem URI (s3://bucket/prefix, gs://...); "
        "default: $RAYSIMNPO_STORAGE, else the sweep file's `storage`",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    return parser.parse_args(argv)


def validate_inputs(sweep: SweepConfig) -> Any:
    """Load data and tokenizer, encode every example: data mistakes surface before any trial. The
    workspace built here is the sweep's: the prepare stage and every trial get it."""
    from . import recipe

    return recipe.workspace(sweep.run)


def print_front(root: str, sweep: SweepConfig) -> None:
    """Original, Retrain and the Pareto front of the sweep's objectives, with the benchmark's headline
    metrics and each trial's hyperparameters, from the `trials` and `metrics` tables. Dominance uses
    each objective metric's direction in `metrics.METRICS` (max, min, or closest to 0)."""
    import numpy as np

    from . import results
    from .benchmarks.registry import benchmark
    from .metrics import metric_direction
    from .pareto import non_dominated_mask

    trials = results.read_table(root, "trials").to_pylist()
    done = [t for t in trials if t["kind"] == "trial" and t["status"] == "completed"]
    failed = [t for t in trials if t["kind"] == "trial" and t["status"] == "failed"]
    print(f"\n{len(done)} trials completed, {len(failed)} failed")
    final: dict[str, dict[str, float]] = {}
    for row in results.read_table(root, "metrics").to_pylist():
        if row["stage"] == "final":
            final.setdefault(row["trial_id"], {})[row["metric"]] = row["value"]
    objectives = [o.metric for o in sweep.search.objectives]
    directions = [metric_direction(m) for m in objectives]
    headline = benchmark(sweep.run.benchmark).headline_metrics
    shown = list(dict.fromkeys([*headline, *objectives]))

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def values(trial_id: str) -> str:
        got = final.get(trial_id, {})
        return "".join(f"{num(got.get(m), '.4g'):>{max(12, len(m) + 2)}}" for m in shown)

    header = "".join(f"{m:>{max(12, len(m) + 2)}}" for m in shown)
    print(f"  {'model':<9}{header}")
    for t in trials:
        if t["kind"] != "trial" and t["trial_id"] in final:
            print(f"  {t['kind']:<9}{values(t['trial_id'])}")
    done = [
        t for t in done if all(np.isfinite(final.get(t["trial_id"], {}).get(m, np.nan)) for m in objectives)
    ]
    if not done:
        return
    matrix = np.array([[final[t["trial_id"]][m] for m in objectives] for t in done])
    front = [t for t, keep in zip(done, non_dominated_mask(matrix, directions), strict=True) if keep]
    first, direction = objectives[0], directions[0]
    sign = {"max": -1.0, "min": 1.0, "zero": 1.0}[direction]
    front.sort(
        key=lambda t: (
            sign * (abs(final[t["trial_id"]][first]) if direction == "zero" else final[t["trial_id"]][first])
        )
    )
    print(f"\nPareto front ({', '.join(f'{m} {d}' for m, d in zip(objectives, directions, strict=True))}):")
    print(f"  {'trial':<18}{'method':<12}{'beta':>7}{'gamma':>7}{'lambda':>8}{'epochs':>7}{'lr':>10}{header}")
    for t in front:
        print(
            f"  {t['trial_id']:<18}{t['method']:<12}{num(t['beta'], '.3g'):>7}{num(t['gamma'], '.3g'):>7}"
            f"{num(t['retain_weight'], '.3g'):>8}{t['epochs']:>7}{t['learning_rate']:>10.2e}"
            f"{values(t['trial_id'])}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .benchmarks.markov import is_markov_sweep

    if is_markov_sweep(args.config or args.sweep):  # `benchmark: markov` at the file's top level
        from .orchestration import markov

        return markov.main(args)
    log = lambda message: print(message, flush=True)  # noqa: E731
    try:
        overrides = list(args.overrides)
        storage_location = args.storage or os.environ.get("RAYSIMNPO_STORAGE")
        if storage_location:  # --storage, else the cluster's default (cluster/*.yaml sets it)
            overrides.append(f"storage={storage_location}")
        sweep = load_sweep_config(args.config or args.sweep, overrides)
        from .orchestration.cluster import check_storage

        storage = check_storage(sweep.storage)
        run_dir = storage.join(sweep.name)
        if storage.exists(sweep.name, "tune") and not args.resume:
            raise UserInputError(
                f"{run_dir} already holds this sweep; pass --resume to continue it, or --storage/"
                "--set name=... for a new one"
            )
        ws = validate_inputs(sweep)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from . import results
    from .orchestration.cluster import start_ray
    from .orchestration.tuner import run_sweep

    started = time.monotonic()
    start_ray(args.address, args.num_cpus)
    storage.fs.create_dir(storage.fs_path(sweep.name), recursive=True)
    log(
        f"[sweep] {sweep.name}: {sweep.search.num_trials} trials of {', '.join(sweep.search.methods)} -> {run_dir}"
    )
    study = run_sweep(sweep, storage, resume=args.resume, log=log, ws=ws)
    root = results.results_root(storage.uri, sweep.name)
    print_front(root, sweep)
    if sweep.relearn is not None:
        from .relearn import attack_sweep

        attack_sweep(sweep, storage, None, log, ws)
    print(f"\nresults:  {root}/{{trials,metrics,examples,weights,relearn}}")
    print(f"study:    optuna-dashboard sqlite:///{study}")
    if storage.remote:
        print(f"          (a copy: {run_dir}/optuna.sqlite)")
    print(f"time:     {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
