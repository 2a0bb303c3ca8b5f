"""Pareto fronts over a table of metric values with a direction per column.

A direction says which values are better: "max" (higher), "min" (lower) or "zero" (closer to 0, i.e.
lower |x|, e.g. MUSE's PrivLeak). Every function first maps each column to a maximisation objective
(x, −x, −|x|) and then works with plain Pareto dominance: row a dominates row b when a is at least as
good in every column and strictly better in one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

Direction = Literal["max", "min", "zero"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)


def _to_maximisation(values: ArrayLike, directions: Sequence[str]) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"values must be a 2-D array [n, k]; got shape {array.shape}")
    if len(directions) != array.shape[1]:
        raise ValueError(f"directions: need one per column ({array.shape[1]}); got {len(directions)}")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"directions: unknown {bad}; allowed {list(DIRECTIONS)}")
    if not np.all(np.isfinite(array)):
        rows = sorted({int(r) for r in np.argwhere(~np.isfinite(array))[:, 0]})
        raise ValueError(f"values: rows {rows} are not finite; drop them before computing fronts")
    out = array.copy()
    for j, direction in enumerate(directions):
        if direction == "min":
            out[:, j] = -array[:, j]
        elif direction == "zero":
            out[:, j] = -np.abs(array[:, j])
    return out


def _non_dominated(gains: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Rows of a maximisation table that no other row dominates."""
    at_least = np.all(gains[:, None, :] >= gains[None, :, :], axis=-1)  # [j, i]: j >= i everywhere
    strictly = np.any(gains[:, None, :] > gains[None, :, :], axis=-1)  # [j, i]: j > i somewhere
    dominated = np.any(at_least & strictly, axis=0)
    return ~dominated


def non_dominated_mask(values: ArrayLike, directions: Sequence[Direction]) -> NDArray[np.bool_]:
    """Boolean mask [n] of the rows on the first Pareto front (ties: identical rows are all kept)."""
    return _non_dominated(_to_maximisation(values, directions))


def pareto_ranks(values: ArrayLike, directions: Sequence[Direction]) -> NDArray[np.int64]:
    """Front index per row by successive non-dominated sorting: 0 = the Pareto front, 1 = the front of
    what remains after removing front 0, and so on."""
    gains = _to_maximisation(values, directions)
    ranks = np.full(gains.shape[0], -1, dtype=np.int64)
    remaining = np.arange(gains.shape[0])
    rank = 0
    while remaining.size:
        front = _non_dominated(gains[remaining])
        ranks[remaining[front]] = rank
        remaining = remaining[~front]
        rank += 1
    return ranks


def hypervolume_2d(
    values: ArrayLike, directions: Sequence[Direction], reference: Sequence[float] | ArrayLike
) -> float:
    """Exact area dominated by the rows of a 2-column table and bounded by the reference point.

    The rows and the reference are mapped to maximisation first (a "zero" reference r becomes −|r|);
    rows not strictly better than the reference in both columns add nothing. Sweep: sort by the first
    objective descending and add the rectangle each row adds above the best second objective so far.
    """
    gains = _to_maximisation(values, directions)
    if gains.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs 2 columns; got {gains.shape[1]}")
    reference_array = np.asarray(reference, dtype=np.float64)
    if reference_array.shape != (2,):
        raise ValueError(f"reference: need 2 numbers; got shape {reference_array.shape}")
    ref = _to_maximisation(reference_array.reshape(1, 2), directions)[0]
    better = gains[np.all(gains > ref, axis=1)]
    order = np.argsort(-better[:, 0], kind="stable")
    area, best_second = 0.0, ref[1]
    for first, second in better[order]:
        if second > best_second:
            area += (first - ref[0]) * (second - best_second)
            best_second = second
    return float(area)


def dominated_by_margin(
    point: ArrayLike, others: ArrayLike, directions: Sequence[Direction], margin: float
) -> bool:
    """Whether some row of `others` beats `point` in EVERY column by at least `margin` of that
    column's empirical ranks: each column is replaced by its percentile among `others` and `point`
    together (the fraction of values it is at least as good as), so the margin is scale-free — a
    p-value spanning ten decades and a utility in [0.5, 0.8] are compared alike. margin 0 is plain
    strict dominance in every column."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin: {margin}; allowed: 0 <= margin < 1 (a fraction of the ranks)")
    rows = np.asarray(others, dtype=np.float64)
    if rows.size == 0:
        return False
    gains = _to_maximisation(np.vstack([rows, np.asarray(point, dtype=np.float64)[None, :]]), directions)
    n = gains.shape[0]
    # rank of each value within its column: how many rows it is at least as good as (its
    # percentile times n); leads are compared in whole ranks, since percentiles as floats put a lead
    # of exactly one rank below 1/n (1.0 - 0.8 < 0.2) and missed it
    ranks = (gains[:, None, :] >= gains[None, :, :]).sum(axis=1)
    lead = ranks[:-1] - ranks[-1]
    needed = max(margin * n, 1.0) - 1e-9  # margin * n is a whole number of ranks up to rounding
    return bool(np.any(np.all(lead >= needed, axis=1)))
