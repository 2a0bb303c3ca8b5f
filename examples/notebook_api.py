"""The notebook API in one script: a sweep, its results as polars frames, then one kept single run.

    python examples/notebook_api.py                    # 4 trials of the default TOFU sweep (CPU)
    python examples/notebook_api.py --set prepare.epochs=2 --trials 2 --storage /tmp/runs   # quicker

Each cell of a notebook would hold one of the steps below. `raysimnpo.sweep(...)` is what
`python -m raysimnpo.sweep` runs (Ray's and transformers' output goes to <run>/logs/), and
`raysimnpo.run(...)` what `python -m raysimnpo.run` runs.
"""

from __future__ import annotations

import argparse
import datetime as dt

import polars as pl
from transformers import AutoModelForCausalLM

import raysimnpo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--storage", default="runs")
    parser.add_argument(
        "--set",
        dest="run_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the sweep's run: section (prepare.epochs=2, ...)",
    )
    args = parser.parse_args()
    name = f"notebook-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"

    # 1. A sweep: Original and Retrain are prepared (or reused from the cache), then Optuna-driven trials.
    run_dir = raysimnpo.sweep(
        "tofu",
        storage=args.storage,
        overrides=[
            f"name={name}",
            f"search.num_trials={args.trials}",
            *(f"run.{s}" for s in args.run_settings),
        ],
    )

    # 2. Its results as polars frames.
    frames = raysimnpo.load(run_dir)
    print(frames.trials.select("trial_id", "kind", "method", "forget_quality", "model_utility"))
    print(
        frames.front.select("trial_id", "method", "beta", "learning_rate", "forget_quality", "model_utility")
    )
    losses = frames.metrics.filter(pl.col("stage") == "epoch").pivot(
        on="metric", index=["trial_id", "epoch"], values="value"
    )
    print(losses.sort("trial_id", "epoch"))

    # 3. One run of the best SimNPO settings on the front, kept on disk and reloaded.
    best = frames.front.filter(pl.col("method") == "simnpo").head(1)
    settings = (
        []
        if best.is_empty()
        else [f"method.beta={best['beta'][0]}", f"unlearn.learning_rate={best['learning_rate'][0]}"]
    )
    kept = raysimnpo.run(
        "tofu",
        method="simnpo",
        overrides=[*settings, *args.run_settings],
        out=f"{args.storage}/single/{name}",
    )
    print({column: round(values["forget_quality"], 4) for column, values in kept.metrics.items()})
    model = AutoModelForCausalLM.from_pretrained(kept.out / "model")
    print(
        f"reloaded {type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters from {kept.out}"
    )


if __name__ == "__main__":
    main()
