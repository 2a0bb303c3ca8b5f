"""Relearning curves (paper Fig. A3) from the `relearn` table: forget quality per relearning epoch,
shortest-relearn as recorded and random-relearn as the mean and sample std over its seeds."""

from __future__ import annotations

import polars as pl

from .load import FORGET_QUALITY, Results

CURVE_COLUMNS = (
    "run",
    "method",
    "trial_id",
    "attack",
    "epoch",
    "seeds",
    "fq_mean",
    "fq_std",
    "relearn_examples",
)


def relearn_curves(res: Results) -> pl.DataFrame:
    """One row per (run, method, trial, attack, epoch): FQ mean and sample std over the attack's seeds
    (std null with one seed), with the number of seeds and of relearned examples."""
    if res.relearn.is_empty():
        return pl.DataFrame(
            schema={
                "run": pl.String(),
                "method": pl.String(),
                "trial_id": pl.String(),
                "attack": pl.String(),
                "epoch": pl.Int32(),
                "seeds": pl.UInt32(),
                "fq_mean": pl.Float64(),
                "fq_std": pl.Float64(),
                "relearn_examples": pl.Int32(),
            }
        )
    return (
        res.relearn.group_by(["run", "method", "trial_id", "attack", "epoch"])
        .agg(
            pl.col("seed").n_unique().alias("seeds"),
            pl.col(FORGET_QUALITY).mean().alias("fq_mean"),
            pl.col(FORGET_QUALITY).std(ddof=1).alias("fq_std"),
            pl.col("relearn_examples").first(),
        )
        .sort(["run", "method", "trial_id", "attack", "epoch"])
        .select(CURVE_COLUMNS)
    )
