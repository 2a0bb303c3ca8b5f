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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .command_line import ArgumentParser
from .config import SweepConfig, load_sweep_config, load_yaml, sweep_file
from .errors import UserInputError

if TYPE_CHECKING:
    from .orchestration.cluster import RayTarget
    from .storage import Storage


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m raysimnpo.sweep", description=__doc__)
    parser.add_argument("sweep", help="a sweep name (tofu, tofu-llama2-7b, ...) or a sweep YAML file")
    parser.add_argument("--config", help="a sweep YAML file (overrides the name's file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--storage",
        help="where runs go: a local folder or a filesystem URI (s3://bucket/prefix, gs://...); "
        "default: $RAYSIMNPO_STORAGE, else the sweep file's `storage`",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    add_ray_arguments(parser)
    return parser.parse_args(argv)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--address, --address-timeout and --num-cpus: checked by `orchestration.cluster.ray_target`
    (read as text here, so that a bad value is one `error:` line like every other mistake)."""
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--address-timeout",
        metavar="SECONDS",
        help="how long the cluster address may take to answer before it is an error (default: 5)",
    )
    parser.add_argument("--num-cpus", help="CPUs for a local Ray (default: all)")


def ray_arguments(args: argparse.Namespace) -> RayTarget:
    """The cluster the command will use, checked (form, reachability, CPUs) before anything starts."""
    from .orchestration.cluster import ray_target

    timeout = args.address_timeout
    if timeout is not None:
        try:
            timeout = float(timeout)
        except ValueError:
            raise UserInputError(f"--address-timeout: {timeout!r}; give a number of seconds > 0") from None
    return ray_target(args.address, args.num_cpus, timeout)


def storage_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """`--set` overrides plus the storage from --storage or $RAYSIMNPO_STORAGE, labelled with where
    each came from (an error names the flag or the variable, not the sweep file)."""
    overrides = list(args.overrides)
    labels: dict[str, str] = {}
    location = args.storage or os.environ.get("RAYSIMNPO_STORAGE")
    if location:  # --storage, else the cluster's default (cluster/*.yaml sets it)
        item = f"storage={location}"
        overrides.append(item)
        labels[item] = "--storage" if args.storage else "RAYSIMNPO_STORAGE"  # never echo a URI
    return overrides, labels


def open_checked_storage(sweep: SweepConfig, labels: Mapping[str, str]) -> Storage:
    """The sweep's storage, reachable and writable; an error names where the location came from."""
    from .orchestration.cluster import check_storage

    try:
        return check_storage(sweep.storage)
    except UserInputError as exc:
        source = labels.get(f"storage={sweep.storage}")
        raise UserInputError(f"{source}: {exc}" if source else str(exc)) from None


def is_markov(name_or_path: str) -> bool:
    """A Markov sweep file (`benchmark: markov` at the top level) runs the Markov study; read
    without importing it (its module loads torch)."""
    return load_yaml(sweep_file(name_or_path)).get("benchmark") == "markov"


def validate_inputs(sweep: SweepConfig) -> None:
    """Load data and tokenizer, encode every example: data mistakes surface before any trial."""
    from . import recipe

    recipe.workspace(sweep.run)


def print_front(root: str, sweep: SweepConfig) -> None:
    import numpy as np

    from . import results
    from .pareto import non_dominated_mask

    trials = results.read_table(root, "trials").to_pylist()
    done = [t for t in trials if t["kind"] == "trial" and t["status"] == "completed"]
    failed = [t for t in trials if t["kind"] == "trial" and t["status"] == "failed"]
    print(f"\n{len(done)} trials completed, {len(failed)} failed")
    if sweep.run.benchmark != "tofu":
        print_objective_front(root, sweep, trials)
        return
    reference = {t["kind"]: t for t in trials if t["kind"] != "trial"}
    for kind in ("original", "retrain"):
        if kind in reference:
            t = reference[kind]
            print(f"  {kind:<9} FQ {t['forget_quality']:.3g}  MU {t['model_utility']:.3f}")
    if not done:
        return
    values = np.array([[t["forget_quality"], t["model_utility"]] for t in done])
    front = [t for t, keep in zip(done, non_dominated_mask(values, ["max", "max"]), strict=True) if keep]
    front.sort(key=lambda t: -t["forget_quality"])
    print("\nPareto front (forget_quality max, model_utility max):")
    print(
        f"  {'trial':<18}{'method':<12}{'beta':>7}{'gamma':>7}{'lambda':>8}{'epochs':>7}{'lr':>10}{'FQ':>11}{'MU':>8}"
    )
    for t in front:

        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        print(
            f"  {t['trial_id']:<18}{t['method']:<12}{num(t['beta'], '.3g'):>7}{num(t['gamma'], '.3g'):>7}"
            f"{num(t['retain_weight'], '.3g'):>8}{t['epochs']:>7}{t['learning_rate']:>10.2e}"
            f"{t['forget_quality']:>11.3g}{t['model_utility']:>8.3f}"
        )


def print_objective_front(root: str, sweep: SweepConfig, trials: list[dict]) -> None:
    """MUSE / WMDP: Original, Retrain and the Pareto front of the sweep's objectives, with the
    benchmark's headline metrics, from the `metrics` table."""
    import numpy as np

    from . import results
    from .pareto import non_dominated_mask
    from .recipe import HEADLINE_METRICS

    final: dict[str, dict[str, float]] = {}
    for row in results.read_table(root, "metrics").to_pylist():
        if row["stage"] == "final":
            final.setdefault(row["trial_id"], {})[row["metric"]] = row["value"]
    objectives = [(o.metric, o.mode) for o in sweep.search.objectives]
    shown = list(dict.fromkeys([*HEADLINE_METRICS[sweep.run.benchmark], *(m for m, _ in objectives)]))
    header = f"  {'trial':<18}{'method':<12}" + "".join(f"{m:>16}" for m in shown)

    def line(trial_id: str, method: str) -> str:
        values = final.get(trial_id, {})
        return f"  {trial_id:<18}{method:<12}" + "".join(
            f"{values.get(m, float('nan')):>16.4g}" for m in shown
        )

    print(header)
    for kind in ("original", "retrain"):
        if kind in final:
            print(line(kind, kind))
    done = [
        t for t in trials if t["kind"] == "trial" and t["status"] == "completed" and t["trial_id"] in final
    ]
    if not done:
        return
    values = np.array([[final[t["trial_id"]].get(m, np.nan) for m, _ in objectives] for t in done])
    mask = non_dominated_mask(values, [mode for _, mode in objectives])
    print(f"\nPareto front ({', '.join(f'{m} {mode}' for m, mode in objectives)}):")
    for t, keep in zip(done, mask, strict=True):
        if keep:
            print(line(t["trial_id"], t["method"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    try:
        target = ray_arguments(args)
        if is_markov(args.config or args.sweep):
            from .orchestration import markov

            args.address, args.num_cpus = target.address, target.num_cpus
            return markov.main(args)
        overrides, labels = storage_overrides(args)
        sweep = load_sweep_config(args.config or args.sweep, overrides, labels)
        storage = open_checked_storage(sweep, labels)
        run_dir = storage.join(sweep.name)
        if storage.exists(sweep.name, "tune") and not args.resume:
            raise UserInputError(
                f"{run_dir} already holds this sweep; pass --resume to continue it, or --storage/"
                "--set name=... for a new one"
            )
        from .orchestration.cluster import check_local_capacity, trial_demand

        demand = trial_demand(sweep)
        if target.address is None:
            check_local_capacity(demand, target.num_cpus)
        validate_inputs(sweep)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from . import results
    from .orchestration.cluster import start_ray
    from .orchestration.tuner import run_sweep

    started = time.monotonic()
    try:
        start_ray(target.address, target.num_cpus, demand)
    except UserInputError as exc:  # a joined cluster that can never hold one trial
        print(f"error: {exc}", file=sys.stderr)
        return 2
    storage.fs.create_dir(storage.fs_path(sweep.name), recursive=True)
    log(
        f"[sweep] {sweep.name}: {sweep.search.num_trials} trials of {', '.join(sweep.search.methods)} -> {run_dir}"
    )
    study = run_sweep(sweep, storage, resume=args.resume, log=log)
    root = results.results_root(storage.uri, sweep.name)
    print_front(root, sweep)
    if sweep.relearn is not None:
        from .relearn import attack_sweep

        attack_sweep(sweep, storage, None, log)
    print(f"\nresults:  {root}/{{trials,metrics,examples,weights,relearn}}")
    print(f"study:    optuna-dashboard sqlite:///{study}")
    if storage.remote:
        print(f"          (a copy: {run_dir}/optuna.sqlite)")
    print(f"time:     {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
