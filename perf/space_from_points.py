"""Where a method's good trials lie: search ranges read off the (trial, epoch) points of finished
sweeps (issue 15: "revisit the default space with per-epoch points in hand").

For every sweep folder given (each `RUN_DIR` with `results/`), every trial is scored by its best
candidate under the Table-2 selection rule: the highest FQ among its evaluated epochs (its last one
included) with MU >= MU(Retrain) - 0.05 (`analysis.tables.MU_TOLERANCE`; 0 when no epoch qualifies).
The same configuration run in several folders counts once, with its best score. Per method, the
`ceil(top x trials)` best by that score (and any tied with the last of them) are the good ones, and
each searched setting's range is the `--band` quantiles (10th-90th by default) of the good trials'
values, rounded outward to 2 significant figures (whole epochs for `unlearn.epochs`). A setting
counts as searched when its value differs between the method's trials.

Prints, per method and setting, the range over all trials, the good trials' band, and the same as
YAML for a sweep file's `search.space` (the scale, `log` or `integer`, stays the file's); and the
front of all the folders' (trial, epoch) points pooled, with its hypervolume: what all these searches
reached together. Writes perf/results/space_from_points.json.

    .venv/bin/python perf/space_from_points.py RUN_DIR [RUN_DIR ...] [--top 0.1] [--band 0.1 0.9]

Only folders of the same benchmark data and prepared models belong together (the script checks
that their Retrain MUs agree to 1e-6).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from raysimnpo.analysis.load import (  # noqa: E402
    Results,
    completed_trials,
    config_key,
    load_runs,
    retrain_utility,
)
from raysimnpo.analysis.tables import MU_TOLERANCE  # noqa: E402
from raysimnpo.errors import UserInputError  # noqa: E402
from raysimnpo.maths.pareto import hypervolume_2d, non_dominated_mask  # noqa: E402
from raysimnpo.results import EPOCH_MARK  # noqa: E402

FQ, MU = "forget_quality", "model_utility"


def flat_settings(params: dict[str, Any]) -> dict[str, float]:
    """A trial's numeric `method.*` and `unlearn.*` settings, keyed as a sweep file's space keys them."""
    return {
        f"{section}.{key}": float(value)
        for section in ("method", "unlearn")
        for key, value in params.get(section, {}).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TrialPoints(NamedTuple):
    """A sweep folder's (trial, epoch) points, as the scripts that read finished sweeps use them."""

    res: Results
    retrain_model_utility: float
    # completed candidates with `parent` (the whole trial's id) and `epoch` (None: the trial's last)
    points: pl.DataFrame
    params: dict[str, str]  # whole trial id -> params_json


def trial_points(run_dir: str) -> TrialPoints:
    res = load_runs([run_dir])
    retrain = retrain_utility(res)
    if not retrain:
        raise UserInputError(f"{run_dir}: no Retrain row, so no MU threshold for the selection rule")
    # an epoch candidate belongs to its trial, whose params hold the schedule it was read off
    parts = pl.col("trial_id").str.split(EPOCH_MARK)
    points = completed_trials(res).with_columns(
        parts.list.first().alias("parent"),
        parts.list.get(1, null_on_oob=True).cast(pl.Int64).alias("epoch"),
    )
    params = dict(zip(res.trials["trial_id"].to_list(), res.trials["params_json"].to_list(), strict=True))
    return TrialPoints(res, next(iter(retrain.values())), points, params)


class Folder(NamedTuple):
    trials: pl.DataFrame  # one row per whole trial: method, its schedule's settings, its best qualifying FQ
    retrain_model_utility: float
    points: pl.DataFrame  # every (trial, epoch) point's FQ and MU
    trial_minutes: float  # the trials' timed phases summed (one CPU each on the default sweep)


def trial_scores(run_dir: str) -> Folder:
    """What one sweep folder adds: its trials scored, its points, the minutes its trials ran."""
    res, mu_retrain, points, params = trial_points(run_dir)
    threshold = mu_retrain - MU_TOLERANCE
    rows = []
    for (parent,), group in points.group_by(["parent"], maintain_order=True):
        if parent not in params:  # a candidate whose trial is not a finished one: nothing to attribute
            continue
        qualifying = group.filter(pl.col(MU) >= threshold)[FQ]
        rows.append(
            {
                "config": config_key(params[parent]),
                "method": group["method"][0],
                "best_forget_quality": max(qualifying.to_list(), default=0.0),
                "settings": json.dumps(flat_settings(json.loads(params[parent]))),
            }
        )
    minutes = res.metrics.filter(pl.col("stage") == "timing")["value"].sum() / 60
    return Folder(pl.DataFrame(rows), mu_retrain, points.select(FQ, MU), float(minutes))


def pooled_front(points: pl.DataFrame) -> dict[str, Any]:
    """The front of every (trial, epoch) point of all the folders together, and its hypervolume
    (reference FQ 0, MU 0, as `perf/search_efficiency.py` measures a sweep's): what all these searches
    reached between them, an upper reference for any one search of this data."""
    values = points.select(FQ, MU).to_numpy()
    front = np.unique(values[non_dominated_mask(values, ["max", "max"])], axis=0)[::-1]  # FQ falling
    return {
        "points": len(values),
        "hypervolume": hypervolume_2d(values, ["max", "max"], [0.0, 0.0]),
        "front": [[float(fq), float(mu)] for fq, mu in front],
    }


def round_out(value: float, up: bool, integer: bool) -> float:
    """`value` rounded away from the band's inside to 2 significant figures (or to a whole number)."""
    if value == 0:
        return 0.0
    scale = 1.0 if integer else 10 ** (math.floor(math.log10(abs(value))) - 1)
    steps = round(value / scale, 9)  # 8.0999999 (a float quantile of 8 and 9) is 8.1, not 8.0
    return round((math.ceil(steps) if up else math.floor(steps)) * scale, 12)


def method_ranges(trials: pl.DataFrame, top: float, band: tuple[float, float]) -> dict[str, Any]:
    """The good trials of one method (top fraction by best FQ) and each searched setting's band."""
    # the ceil(top x n) best trials, and any that tie with the last of them (FQ takes few values)
    ranked = sorted(trials["best_forget_quality"].to_list(), reverse=True)
    cut = float(ranked[max(1, math.ceil(top * len(ranked))) - 1])
    good = trials.filter(pl.col("best_forget_quality") >= cut)
    settings = [json.loads(s) for s in trials["settings"].to_list()]
    good_settings = [json.loads(s) for s in good["settings"].to_list()]
    ranges = {}
    for key in sorted(settings[0]):
        values = [s[key] for s in settings if key in s]
        if len(set(values)) < 2:
            continue  # not searched
        good_values = [s[key] for s in good_settings if key in s]
        integer = key == "unlearn.epochs"
        low = round_out(float(np.quantile(good_values, band[0])), False, integer)
        high = round_out(float(np.quantile(good_values, band[1])), True, integer)
        ranges[key] = {
            "all_trials": [min(values), max(values)],
            "good_trials": [min(good_values), max(good_values)],
            "band": [low, high],
        }
    return {
        "trials": trials.height,
        "good_trials": good.height,
        "good_if_forget_quality_at_least": cut,
        "best_forget_quality": sorted(good["best_forget_quality"].to_list(), reverse=True),
        "ranges": ranges,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", help="sweep folders (each with results/)")
    parser.add_argument(
        "--top", type=float, default=0.1, help="fraction of each method's trials that are good"
    )
    parser.add_argument(
        "--band", type=float, nargs=2, default=(0.1, 0.9), help="quantiles of the good trials' values"
    )
    args = parser.parse_args()

    folders = {}
    for run_dir in args.run_dirs:
        try:
            folders[run_dir] = trial_scores(run_dir)
        except UserInputError as error:  # a folder without results or without a Retrain row
            parser.error(str(error))
    utilities = {run_dir: folder.retrain_model_utility for run_dir, folder in folders.items()}
    spread = max(utilities.values()) - min(utilities.values())
    if spread > 1e-6:
        parser.error(
            f"the folders' Retrain MUs differ by {spread:.3g}: not the same data and models ({utilities})"
        )
    trials = (
        pl.concat([folder.trials for folder in folders.values()])
        .group_by("config", "method", "settings")
        .agg(pl.col("best_forget_quality").max())
        .sort("config")  # a fixed order whatever the folders' order
    )
    report = {
        "runs": args.run_dirs,
        "retrain_model_utility": next(iter(utilities.values())),
        "selection": f"highest FQ with MU >= MU(Retrain) - {MU_TOLERANCE}",
        "top": args.top,
        "band": list(args.band),
        "methods": {
            method: method_ranges(trials.filter(pl.col("method") == method), args.top, tuple(args.band))
            for method in sorted(trials["method"].unique().to_list())
        },
        "pooled_front": {
            **pooled_front(pl.concat([folder.points for folder in folders.values()])),
            "trial_minutes": sum(folder.trial_minutes for folder in folders.values()),
        },
    }
    for method, found in report["methods"].items():
        print(
            f"{method}: {found['trials']} trials, {found['good_trials']} good (best FQ >= "
            f"{found['good_if_forget_quality_at_least']:.3g})"
        )
        for key, r in found["ranges"].items():
            print(
                f"  {key:24s} all {r['all_trials'][0]:.3g}-{r['all_trials'][1]:.3g}   good "
                f"{r['good_trials'][0]:.3g}-{r['good_trials'][1]:.3g}   band {r['band'][0]:.3g}-{r['band'][1]:.3g}"
            )
    pooled = report["pooled_front"]
    shown = ", ".join(f"{fq:.3g}/{mu:.3f}" for fq, mu in pooled["front"])
    print(
        f"pooled front of all {pooled['points']} (trial, epoch) points, {pooled['trial_minutes']:.0f} trial-minutes: "
        f"hypervolume {pooled['hypervolume']:.3f} (FQ/MU: {shown})"
    )
    print("\nsearch.space (YAML):")
    for method, found in report["methods"].items():
        print(f"  {method}:")
        for key, r in found["ranges"].items():
            low, high = r["band"]
            print(f"    {key}: {{low: {low:g}, high: {high:g}}}")
    print(f"\nwrote {harness.write_result('space_from_points', report)}")


if __name__ == "__main__":
    main()
