"""raysimnpo.maths.pareto on hand sets with mixed directions."""

import numpy as np
import pytest

from raysimnpo.maths.pareto import Direction, hypervolume_2d, non_dominated_mask, pareto_ranks

# Columns: forget_quality ("max"), forget_rouge ("min"), privleak ("zero": closer to 0 is better).
# Mapped to maximisation (x, −y, −|z|):
#   A ( 0.9, 0.2,  -5)  -> (0.9, -0.2, -5)
#   B ( 0.9, 0.2,   3)  -> (0.9, -0.2, -3)   dominates A (only |privleak| better)
#   C ( 0.5, 0.1,   0)  -> (0.5, -0.1,  0)   best rouge and privleak: on the front
#   D ( 0.4, 0.3,   4)  -> (0.4, -0.3, -4)   dominated by B (and by C)
#   E ( 0.95, 0.5, -10) -> (0.95, -0.5, -10) best forget quality: on the front
#   F ( 0.5, 0.1,   0)  duplicate of C: not dominated by it, so also on the front
VALUES = np.array(
    [[0.9, 0.2, -5.0], [0.9, 0.2, 3.0], [0.5, 0.1, 0.0], [0.4, 0.3, 4.0], [0.95, 0.5, -10.0], [0.5, 0.1, 0.0]]
)
DIRECTIONS: list[Direction] = ["max", "min", "zero"]


def test_non_dominated_mask_mixed_directions() -> None:
    assert non_dominated_mask(VALUES, DIRECTIONS).tolist() == [False, True, True, False, True, True]


def test_zero_direction_compares_absolute_values() -> None:
    # privleak −2 beats +3 under "zero" (|−2| < 3) but loses under "max".
    values = np.array([[-2.0], [3.0]])
    assert non_dominated_mask(values, ["zero"]).tolist() == [True, False]
    assert non_dominated_mask(values, ["max"]).tolist() == [False, True]


def test_pareto_ranks_successive_fronts() -> None:
    # Front 0 = {B, C, E, F}. Without them: A (0.9, -0.2, -5) dominates D (0.4, -0.3, -4)? No: D has the
    # better privleak (|4| < |−5|), so front 1 = {A, D}.
    assert pareto_ranks(VALUES, DIRECTIONS).tolist() == [1, 0, 0, 1, 0, 0]
    # A chain in one "min" column: ranks are the sorted order.
    assert pareto_ranks(np.array([[3.0], [1.0], [2.0]]), ["min"]).tolist() == [2, 0, 1]


def test_hypervolume_three_points_by_hand() -> None:
    # Maximise both, reference (0, 0), points (1,3), (2,2), (3,1): union of rectangles
    # = 3·1 (x ≤ 3, y ≤ 1) + 2·1 (x ≤ 2, 1 < y ≤ 2) + 1·1 (x ≤ 1, 2 < y ≤ 3) = 6.
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume_2d(pts, ["max", "max"], [0.0, 0.0]) == pytest.approx(6.0)
    # A dominated point and a point outside the reference box add nothing.
    more = np.vstack([pts, [[1.0, 1.0], [5.0, -1.0]]])
    assert hypervolume_2d(more, ["max", "max"], [0.0, 0.0]) == pytest.approx(6.0)


def test_hypervolume_mixed_directions() -> None:
    # Column 0 "min" with reference 4, column 1 "zero" with reference −3 (maps to −|−3| = −3).
    # Points (1, 1), (2, −0.5), (3, 0) map to (−1, −1), (−2, −0.5), (−3, 0); reference (−4, −3):
    # sweep by the first objective descending:
    #   (−1, −1):   width −1 − (−4) = 3, height −1 − (−3) = 2    -> 6
    #   (−2, −0.5): width 2,            height −0.5 − (−1) = 0.5 -> 1
    #   (−3, 0):    width 1,            height 0 − (−0.5) = 0.5  -> 0.5     total 7.5
    pts = np.array([[1.0, 1.0], [2.0, -0.5], [3.0, 0.0]])
    assert hypervolume_2d(pts, ["min", "zero"], [4.0, -3.0]) == pytest.approx(7.5)
    assert hypervolume_2d(pts, ["min", "zero"], [4.0, 3.0]) == pytest.approx(7.5)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown \['up'\]"):
        non_dominated_mask(VALUES, ["max", "min", "up"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="one per column"):
        pareto_ranks(VALUES, ["max"])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        non_dominated_mask(np.array([[1.0], [np.nan]]), ["max"])
    with pytest.raises(ValueError, match="2 columns"):
        hypervolume_2d(VALUES, DIRECTIONS, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d(VALUES[:, :2], ["max", "min"], [0.0])


def test_dominated_by_margin_compares_rank_percentiles() -> None:
    from raysimnpo.maths.pareto import dominated_by_margin

    # FQ (max) spans decades, MU (max) a narrow band; the point is (1e-6, 0.70).
    others = [[1e-2, 0.75], [1e-8, 0.80], [1e-4, 0.60]]
    point = [1e-6, 0.70]
    # Percentiles over the 4 rows: FQ 1e-2 -> 1.0, point -> 0.5; MU 0.75 -> 0.75, point -> 0.5.
    # So (1e-2, 0.75) leads the point by 0.5 and 0.25 percentile points.
    assert dominated_by_margin(point, others, ["max", "max"], 0.25)
    assert not dominated_by_margin(point, others, ["max", "max"], 0.3)
    # Strict dominance only at margin 0: a tie in one column is not a lead.
    assert not dominated_by_margin([1e-2, 0.5], [[1e-2, 0.9]], ["max", "max"], 0.0)
    assert dominated_by_margin([1e-3, 0.5], [[1e-2, 0.9]], ["max", "max"], 0.0)
    # Directions: a lower loss is better.
    assert dominated_by_margin([1.0, 0.5], [[0.5, 0.9]], ["min", "max"], 0.0)
    assert not dominated_by_margin([1.0, 0.5], [], ["max", "max"], 0.1)
    # A lead of exactly the margin counts, whatever the float rounding of its percentiles: over 5
    # rows (1e-2, 0.5) is at percentile 0.8 in both columns and (0.9, 0.9) at 1.0, a lead of one rank
    # (0.2; as floats 1.0 - 0.8 = 0.19999999999999996).
    others = [[0.001, 0.3], [0.002, 0.3], [0.003, 0.3], [0.9, 0.9]]
    assert dominated_by_margin([1e-2, 0.5], others, ["max", "max"], 0.0)
    assert dominated_by_margin([1e-2, 0.5], others, ["max", "max"], 0.2)
    assert not dominated_by_margin([1e-2, 0.5], others, ["max", "max"], 0.21)
    # 15 rows, margin 0.2 = 3 ranks (0.2 x 15 is 3.0000000000000004 as a float): a 3-rank lead counts
    fifteen = [[float(i), float(i)] for i in range(14)]
    assert dominated_by_margin([10.5, 10.5], fifteen, ["max", "max"], 0.2)  # 13 leads by 3 ranks
    assert not dominated_by_margin([11.5, 11.5], fifteen, ["max", "max"], 0.2)  # 13 leads by 2
    with pytest.raises(ValueError, match=r"margin: 1.0; allowed: 0 <= margin < 1"):
        dominated_by_margin([1.0, 0.5], [[0.5, 0.9]], ["max", "max"], 1.0)
