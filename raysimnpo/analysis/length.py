"""Response length |y| and unlearning (SimNPO paper §4 and §5, Figs. 2, 3, 5 and A4).

* `length_split`: forget quality on the shortest 50% and the longest 50% of the forget set by |y|
  (the `answer_tokens` of the `examples` table), each half's truth ratios compared with the Retrain
  model's on the same examples (TOFU's KS test, `raysimnpo.maths.metrics.tofu.forget_quality`), for Original,
  Retrain and each method's selected trial (Fig. 2, Fig. A4).
* `weight_correlations`: Pearson's r between the recorded gradient weight (NPO's w of eq. 3, SimNPO's w'
  of eq. 5; the `weights` table) and |y| per epoch of each method's selected trial (Fig. 5).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from ..maths.metrics.tofu import forget_quality
from .load import REFERENCE_KINDS, REFERENCE_LABELS, Results

HALVES = ("short", "long")
HALF_LABELS = {"short": "shortest 50%", "long": "longest 50%"}
LENGTH_SPLIT_SCHEMA: dict[str, pl.DataType] = {
    "run": pl.String(),
    "row": pl.String(),
    "trial_id": pl.String(),
    "half": pl.String(),
    "examples": pl.Int64(),
    "min_tokens": pl.Int64(),
    "max_tokens": pl.Int64(),
    "forget_quality": pl.Float64(),
    "ks_statistic": pl.Float64(),
}
CORRELATION_SCHEMA: dict[str, pl.DataType] = {
    "run": pl.String(),
    "method": pl.String(),
    "trial_id": pl.String(),
    "epoch": pl.Int64(),
    "examples": pl.Int64(),
    "pearson_r": pl.Float64(),
    "weight_mean": pl.Float64(),
    "weight_std": pl.Float64(),
}


def shown_models(res: Results, selection: pl.DataFrame, run: str) -> list[tuple[str, str]]:
    """(row label, trial_id) of Original, Retrain (when present) and each method's selected trial."""
    trials = res.trials.filter(pl.col("run") == run)
    models = []
    for kind in REFERENCE_KINDS:
        ref = trials.filter(pl.col("kind") == kind)
        if not ref.is_empty():
            models.append((REFERENCE_LABELS[kind], str(ref["trial_id"][0])))
    for chosen in selection.filter(pl.col("run") == run).iter_rows(named=True):
        models.append((str(chosen["method"]), str(chosen["trial_id"])))
    return models


def length_halves(forget: pl.DataFrame) -> dict[str, list[int]]:
    """The forget-set indices of the shortest ⌊N/2⌋ answers ("short") and the other ⌈N/2⌉ ("long"),
    ordered by |y| (`answer_tokens`), ties broken by index. `forget`: rows with index, answer_tokens."""
    ordered = forget.select("index", "answer_tokens").unique("index").sort("answer_tokens", "index")
    indices = [int(i) for i in ordered["index"].to_list()]
    cut = len(indices) // 2
    return {"short": indices[:cut], "long": indices[cut:]}


def forget_rows(res: Results, run: str, trial_id: str) -> pl.DataFrame:
    return res.examples.filter(
        (pl.col("run") == run) & (pl.col("trial_id") == trial_id) & (pl.col("split") == "forget")
    ).select("index", "answer_tokens", "truth_ratio")


def truth_ratios_by_half(res: Results, selection: pl.DataFrame) -> pl.DataFrame:
    """Per run, the forget truth ratios R of every shown model (`shown_models`) with the half of its
    example: columns run, row, trial_id, half, index, answer_tokens, truth_ratio. Halves come from the
    Retrain model's |y| (the same answers for every model); a run without Retrain examples is left out."""
    frames = []
    for run in res.labels:
        models = shown_models(res, selection, run)
        retrain = [t for label, t in models if label == REFERENCE_LABELS["retrain"]]
        reference = forget_rows(res, run, retrain[0]) if retrain else pl.DataFrame()
        if reference.height < 2:
            continue
        halves = length_halves(reference)
        half_of = pl.DataFrame(
            {
                "index": [i for h in HALVES for i in halves[h]],
                "half": [h for h in HALVES for _ in halves[h]],
            },
            schema={"index": pl.Int32, "half": pl.String},
        )
        for label, trial_id in models:
            rows = forget_rows(res, run, trial_id).join(half_of, on="index", how="inner")
            frames.append(
                rows.select(
                    pl.lit(run).alias("run"),
                    pl.lit(label).alias("row"),
                    pl.lit(trial_id).alias("trial_id"),
                    "half",
                    "index",
                    "answer_tokens",
                    "truth_ratio",
                )
            )
    if not frames:
        return pl.DataFrame(
            schema={
                "run": pl.String,
                "row": pl.String,
                "trial_id": pl.String,
                "half": pl.String,
                "index": pl.Int32,
                "answer_tokens": pl.Int32,
                "truth_ratio": pl.Float64,
            }
        )
    return pl.concat(frames, how="vertical")


def length_split(ratios: pl.DataFrame) -> pl.DataFrame:
    """Forget quality per run, model and length half (paper Figs. 2 and A4): the KS-test p-value between
    the model's truth ratios on the half and Retrain's on the same examples. `ratios`:
    `truth_ratios_by_half`. Columns: `LENGTH_SPLIT_SCHEMA`."""
    out = []
    for (run,), part in ratios.group_by(["run"], maintain_order=True):
        retrain = part.filter(pl.col("row") == REFERENCE_LABELS["retrain"])
        for (label, trial_id), model in part.group_by(["row", "trial_id"], maintain_order=True):
            for half in HALVES:
                mine = model.filter(pl.col("half") == half).sort("index")
                theirs = retrain.filter(pl.col("half") == half).sort("index")
                if mine.is_empty() or theirs.is_empty():
                    continue
                fq = forget_quality(mine["truth_ratio"].to_numpy(), theirs["truth_ratio"].to_numpy())
                tokens = mine["answer_tokens"]
                out.append(
                    {
                        "run": run,
                        "row": label,
                        "trial_id": trial_id,
                        "half": half,
                        "examples": mine.height,
                        "min_tokens": tokens.min(),
                        "max_tokens": tokens.max(),
                        "forget_quality": fq.pvalue,
                        "ks_statistic": fq.statistic,
                    }
                )
    return pl.DataFrame(out, schema=LENGTH_SPLIT_SCHEMA)


def selected_weights(res: Results, selection: pl.DataFrame) -> pl.DataFrame:
    """The `weights` rows of each method's selected trial, with a `method` column."""
    chosen = selection.select("run", "method", "trial_id")
    return res.weights.join(chosen, on=["run", "trial_id"], how="inner").sort(
        "run", "method", "epoch", "index"
    )


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (scipy.stats.pearsonr); NaN with fewer than two points or a constant input."""
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def weight_correlations(weights: pl.DataFrame) -> pl.DataFrame:
    """Pearson's r between gradient weight and |y| per run, method and epoch (paper Fig. 5), with the
    weights' mean and sample std. `weights`: `selected_weights`. Columns: `CORRELATION_SCHEMA`."""
    out = []
    for (run, method, trial_id, epoch), part in weights.group_by(
        ["run", "method", "trial_id", "epoch"], maintain_order=True
    ):
        w = part["weight"].to_numpy().astype(np.float64)
        n = part["answer_tokens"].to_numpy().astype(np.float64)
        out.append(
            {
                "run": run,
                "method": method,
                "trial_id": trial_id,
                "epoch": epoch,
                "examples": part.height,
                "pearson_r": pearson(w, n),
                "weight_mean": float(w.mean()),
                "weight_std": float(w.std(ddof=1)) if w.size > 1 else None,
            }
        )
    return pl.DataFrame(out, schema=CORRELATION_SCHEMA)
