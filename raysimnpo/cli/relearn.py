"""Relearning attacks on a finished sweep: `python -m raysimnpo.relearn SWEEP [--storage DIR]
[--set relearn.epochs=2 ...] [--trials ID ...]`.

SWEEP is the sweep's name or YAML file, as given to `python -m raysimnpo.sweep`; its `relearn:`
section (or the defaults of the paper's appendix C.3: shortest 20% and 5 random 20% draws, 3 epochs)
says how to attack. The attacked trials are each method's selected trial (the report's selection
rule: highest FQ with MU within 0.05 of Retrain's) or those given with --trials. Forget quality
after every relearning epoch lands in the `relearn` results table; `python -m raysimnpo.report`
plots it. A sweep whose file has `relearn:` runs the same step when its trials are done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..cache import check_cache_dir
from ..config.sweep import RelearnSettings, SweepConfig, load_sweep_config
from ..errors import UserInputError
from .parser import ArgumentParser
from .sweep import add_ray_arguments, open_checked_storage, ray_arguments

if TYPE_CHECKING:
    from ..results.storage import Storage


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m raysimnpo.relearn", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="the finished sweep's name (tofu, ...) or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--storage", help="where the sweep's run folder is: a folder or URI (default: the file's storage)"
    )
    parser.add_argument("--trials", nargs="+", metavar="ID", help="attack these trials (default: selected)")
    add_ray_arguments(parser)
    return parser.parse_args(argv)


def attack_targets(
    run_dir: str, settings: RelearnSettings, trial_ids: Sequence[str] | None
) -> tuple[list[dict[str, Any]], list[float]]:
    """The completed trials to attack and the Retrain model's forget truth ratios (in forget order)."""
    import polars as pl

    from ..analysis.load import load_runs
    from ..analysis.tables import select_configurations

    res = load_runs([run_dir])
    done = res.trials.filter((pl.col("kind") == "trial") & (pl.col("status") == "completed"))
    if trial_ids:
        missing = sorted(set(trial_ids) - set(done["trial_id"].to_list()))
        if missing:
            from ..results import EPOCH_MARK

            whole = sorted(t for t in done["trial_id"].to_list() if EPOCH_MARK not in t)
            raise UserInputError(
                f"--trials: {missing} are not completed trials of {run_dir}; completed: "
                f"{', '.join(whole) or 'none'}"
                + (
                    f" (and their evaluated epochs, <trial>{EPOCH_MARK}<epoch>)"
                    if len(whole) < done.height
                    else ""
                )
            )
        chosen = done.filter(pl.col("trial_id").is_in(list(trial_ids)))
    else:
        selected = select_configurations(res)
        if settings.methods is not None:
            selected = selected.filter(pl.col("method").is_in(settings.methods))
        chosen = done.filter(pl.col("trial_id").is_in(selected["trial_id"].to_list()))
    if chosen.is_empty():
        raise UserInputError(
            f"{run_dir}: no completed trial to attack (methods: {settings.methods or 'all'})"
        )
    retrain = res.examples.filter((pl.col("trial_id") == "retrain") & (pl.col("split") == "forget"))
    if retrain.is_empty():
        raise UserInputError(
            f"{run_dir}: no Retrain forget examples in the results; forget quality needs them"
        )
    ratios = retrain.sort("index")["truth_ratio"].to_list()
    trials = chosen.select("trial_id", "method", "checkpoint").sort("method", "trial_id").to_dicts()
    return trials, ratios


def attack_sweep(
    sweep: SweepConfig,
    storage: Storage,
    trial_ids: Sequence[str] | None,
    log: Callable[[str], None],
    workspace: Any = None,
) -> list[dict[str, Any]]:
    """Run the relearning attacks of a finished sweep (Ray must be started) and print the table.
    `workspace`: the sweep's (`recipes.workspace.Workspace`), when the caller has built it already."""
    from .. import results
    from ..orchestration.relearn import run_relearn_attacks

    trials, ratios = attack_targets(storage.join(sweep.name), sweep.relearn or RelearnSettings(), trial_ids)
    root = results.results_root(storage.uri, sweep.name)
    rows = run_relearn_attacks(sweep, root, trials, ratios, log, workspace)
    print_relearn_table(rows, sweep.relearn or RelearnSettings())
    return rows


def print_relearn_table(rows: Sequence[dict[str, Any]], settings: RelearnSettings) -> None:
    """FQ per relearning epoch: shortest-relearn, and random-relearn as mean ± std over seeds."""
    import numpy as np

    epochs = range(settings.epochs + 1)
    print("\nRelearning attacks: forget quality after each relearning epoch (epoch 0 = unlearned)")
    print(
        f"  {'method':<10}{'trial':<12}{'attack':<10}" + "".join(f"{'epoch ' + str(e):>18}" for e in epochs)
    )
    keys = sorted({(r["method"], r["trial_id"], r["attack"]) for r in rows})
    for method, trial_id, attack in keys:
        cells = []
        for e in epochs:
            values = [
                r["forget_quality"]
                for r in rows
                if (r["method"], r["trial_id"], r["attack"], r["epoch"]) == (method, trial_id, attack, e)
            ]
            spread = f" ± {np.std(values, ddof=1):.2g}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.3g}{spread}".rjust(20))
        print(f"  {method:<10}{trial_id:<12}{attack:<10}" + "".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    try:
        target = ray_arguments(args.address, args.num_cpus, args.address_timeout)
        overrides = list(args.overrides)
        labels = {f"storage={args.storage}": "--storage"} if args.storage else {}
        if args.storage:
            overrides.append(f"storage={args.storage}")
        sweep = load_sweep_config(args.sweep, overrides, labels)
        storage = open_checked_storage(sweep, labels)
        check_cache_dir(sweep.run)
        attack_targets(storage.join(sweep.name), sweep.relearn or RelearnSettings(), args.trials)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..orchestration.cluster import start_ray

    start_ray(target.address, target.num_cpus)
    attack_sweep(sweep, storage, args.trials, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
