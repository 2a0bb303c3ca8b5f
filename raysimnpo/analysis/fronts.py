"""Pareto fronts and hypervolumes of forget quality (FQ) vs model utility (MU) over a run's trials.

Both objectives are maximised (DESIGN §6: FQ is the KS-test p-value against Retrain, MU the harmonic
mean of the nine utility numbers). Fronts are computed within each run: per method (`rank_method`)
and over all methods together (`rank_overall`), by successive non-dominated sorting
(`raysimnpo.maths.pareto.pareto_ranks`; rank 0 = the non-dominated front). A log scale on FQ does not change
dominance, so the fronts are the same whether FQ is read on its natural or its log scale.

Hypervolume (`raysimnpo.maths.pareto.hypervolume_2d`): the area of the (FQ, MU) region dominated by a method's
trials and bounded below by the reference point (FQ = 0, MU = 0), FQ on its natural scale (0..1), so
the largest possible value is 1 (FQ = 1 and MU = 1); the Retrain model alone spans 1 × MU(Retrain).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..maths.metrics import metric_direction
from ..maths.pareto import Direction, hypervolume_2d, pareto_ranks
from .load import FORGET_QUALITY, MODEL_UTILITY

OBJECTIVES: tuple[str, str] = (FORGET_QUALITY, MODEL_UTILITY)
# Each objective's direction is its metric's in `raysimnpo.maths.metrics.METRICS` (both "max").
DIRECTIONS: tuple[Direction, Direction] = (metric_direction(FORGET_QUALITY), metric_direction(MODEL_UTILITY))
HV_REFERENCE: tuple[float, float] = (0.0, 0.0)  # (FQ, MU)
ALL_METHODS = "all methods"


def _values(frame: pl.DataFrame) -> np.ndarray:
    return frame.select(OBJECTIVES).to_numpy().astype(np.float64).reshape(-1, 2)


def _ranks(frame: pl.DataFrame, by: list[str]) -> pl.Series:
    """Front index of every row within its group of `by` columns, in the frame's row order."""
    out = np.zeros(frame.height, dtype=np.int64)
    indexed = frame.with_row_index("_row")
    for _, group in indexed.group_by(by, maintain_order=True):
        out[group["_row"].to_numpy()] = pareto_ranks(_values(group), DIRECTIONS)
    return pl.Series(out, dtype=pl.Int64)


def front_table(points: pl.DataFrame) -> pl.DataFrame:
    """`points` (completed trials with FQ and MU; see `analysis.load.completed_trials`) plus
    rank_method, rank_overall (0 = on the front), on_method_front, and dominated (some trial of the same
    run, of any method, is at least as good in FQ and MU and better in one)."""
    if points.is_empty():
        return points.with_columns(
            pl.lit(None, dtype=pl.Int64).alias("rank_method"),
            pl.lit(None, dtype=pl.Int64).alias("rank_overall"),
            pl.lit(None, dtype=pl.Boolean).alias("on_method_front"),
            pl.lit(None, dtype=pl.Boolean).alias("dominated"),
        )
    return points.with_columns(
        _ranks(points, ["run", "method"]).alias("rank_method"),
        _ranks(points, ["run"]).alias("rank_overall"),
    ).with_columns(
        (pl.col("rank_method") == 0).alias("on_method_front"),
        (pl.col("rank_overall") > 0).alias("dominated"),
    )


def hypervolumes(points: pl.DataFrame) -> pl.DataFrame:
    """Hypervolume per (run, method) and per run over all methods ("all methods"), reference (0, 0).

    Columns: run, method, trials, front_size, hypervolume, reference_forget_quality,
    reference_model_utility.
    """
    rows = []
    for (run,), in_run in points.group_by(["run"], maintain_order=True):
        groups = [(m, g) for (m,), g in in_run.group_by(["method"], maintain_order=True)]
        groups.sort(key=lambda item: str(item[0]))
        for method, group in [*groups, (ALL_METHODS, in_run)]:
            values = _values(group)
            front = pareto_ranks(values, DIRECTIONS) == 0
            rows.append(
                {
                    "run": run,
                    "method": method,
                    "trials": group.height,
                    "front_size": int(front.sum()),
                    "hypervolume": hypervolume_2d(values, DIRECTIONS, HV_REFERENCE),
                    "reference_forget_quality": HV_REFERENCE[0],
                    "reference_model_utility": HV_REFERENCE[1],
                }
            )
    schema = {
        "run": pl.String,
        "method": pl.String,
        "trials": pl.Int64,
        "front_size": pl.Int64,
        "hypervolume": pl.Float64,
        "reference_forget_quality": pl.Float64,
        "reference_model_utility": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def print_front(root: str, objectives: list[str], benchmark_name: str) -> None:
    """What `python -m raysimnpo.sweep` prints at the end: Original, Retrain and the Pareto front of the
    sweep's `objectives` (every evaluated epoch a candidate), with the benchmark's headline metrics and
    each trial's hyperparameters, from the `trials` and `metrics` tables. Dominance uses each
    objective metric's direction in `maths.metrics.METRICS` (max, min, or closest to 0)."""
    import numpy as np

    from .. import results
    from ..benchmarks.registry import benchmark
    from ..maths.metrics import NOISE_CEILING, metric_direction
    from ..maths.pareto import non_dominated_mask

    trials = results.read_table(root, "trials").to_pylist()
    done = [t for t in trials if t["kind"] == "trial" and t["status"] == "completed"]
    failed = [t for t in trials if t["kind"] == "trial" and t["status"] == "failed"]
    print(f"\n{len(done)} trials completed, {len(failed)} failed")
    metric_rows = results.read_table(root, "metrics").to_pylist()
    # every evaluated epoch of a trial is a candidate of the front (`<trial id>.epoch-<epoch>`)
    epoch_trials, epoch_metrics = results.epoch_candidates(trials, metric_rows, objectives)
    done += epoch_trials
    final: dict[str, dict[str, float]] = {}
    for row in metric_rows + epoch_metrics:
        if row["stage"] == "final":
            final.setdefault(row["trial_id"], {})[row["metric"]] = row["value"]
    directions = [metric_direction(m) for m in objectives]
    headline = benchmark(benchmark_name).headline_metrics
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
    ceiling = final.get("retrain", {}).get(NOISE_CEILING)
    if ceiling is not None:
        print(f"  noise ceiling: FQ {ceiling:.3g} (a second Retrain, seed + 1, against Retrain)")
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
    # hyperparameter columns one wider than the longest .3g form ("1.23e-05"), so
    # neighbouring values never touch
    print(f"  {'trial':<18}{'method':<12}{'beta':>9}{'gamma':>9}{'lambda':>9}{'epochs':>7}{'lr':>10}{header}")
    for t in front:
        print(
            f"  {t['trial_id']:<18}{t['method']:<12}{num(t['beta'], '.3g'):>9}{num(t['gamma'], '.3g'):>9}"
            f"{num(t['retain_weight'], '.3g'):>9}{t['epochs']:>7}{t['learning_rate']:>10.2e}"
            f"{values(t['trial_id'])}"
        )
