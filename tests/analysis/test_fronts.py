"""analysis.fronts over the fixture sweep (tests/analysis/conftest.py): fronts, dominance, hypervolume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysimnpo.analysis.fronts import front_table, hypervolumes, print_front
from raysimnpo.analysis.load import completed_trials, load_runs
from raysimnpo.maths.pareto import non_dominated_mask, pareto_ranks


def test_completed_trials_leave_out_failed_and_reference_rows(demo_run: Path) -> None:
    points = completed_trials(load_runs([str(demo_run)]))
    assert sorted(points["trial_id"].to_list()) == [
        "npo-a",
        "npo-b",
        "npo-c",
        "npo-d",
        "simnpo-hi",
        "simnpo-s0",
        "simnpo-s1",
    ]


def test_front_membership_per_method_and_overall(demo_run: Path) -> None:
    front = front_table(completed_trials(load_runs([str(demo_run)])))
    rows = {r["trial_id"]: r for r in front.iter_rows(named=True)}
    # npo: a (.20,.52), b (.50,.40), c (.05,.53) trade off; d (.10,.45) is dominated by a.
    # simnpo: s1 (.80,.59) dominates s0 (.60,.57); hi (.90,.30) has the highest FQ.
    assert {t: rows[t]["rank_method"] for t in rows} == {
        "npo-a": 0,
        "npo-b": 0,
        "npo-c": 0,
        "npo-d": 1,
        "simnpo-s0": 1,
        "simnpo-s1": 0,
        "simnpo-hi": 0,
    }
    # Overall: {s1, hi}, then {s0} (dominates every npo trial), then {a, b, c}, then {d}.
    assert {t: rows[t]["rank_overall"] for t in rows} == {
        "simnpo-s1": 0,
        "simnpo-hi": 0,
        "simnpo-s0": 1,
        "npo-a": 2,
        "npo-b": 2,
        "npo-c": 2,
        "npo-d": 3,
    }
    assert sorted(t for t in rows if not rows[t]["dominated"]) == ["simnpo-hi", "simnpo-s1"]
    assert rows["npo-b"]["on_method_front"] and rows["npo-b"]["dominated"]


def test_dominance_with_mixed_directions() -> None:
    # columns: FQ (max), MU (max), PrivLeak (closest to 0 is best)
    values = np.array(
        [
            [0.5, 0.5, -10.0],  # 0: dominates row 1 (same FQ/MU, |−10| < |20|)
            [0.5, 0.5, 20.0],  # 1
            [0.4, 0.6, 30.0],  # 2: best MU, so on the front despite the worst PrivLeak
            [0.4, 0.4, 10.0],  # 3: dominated by row 0 (FQ, MU higher, |PrivLeak| equal)
        ]
    )
    mask = non_dominated_mask(values, ["max", "max", "zero"])
    assert mask.tolist() == [True, False, True, False]
    assert pareto_ranks(values, ["max", "max", "zero"]).tolist() == [0, 1, 0, 1]
    # With PrivLeak read as "max", row 1 (20) would dominate row 0 instead.
    assert non_dominated_mask(values, ["max", "max", "max"]).tolist() == [False, True, True, False]


def test_hypervolume_per_method_by_hand(demo_run: Path) -> None:
    hv = hypervolumes(completed_trials(load_runs([str(demo_run)])))
    got = {r["method"]: r["hypervolume"] for r in hv.iter_rows(named=True)}
    # Reference (FQ 0, MU 0); sweep the front by FQ descending, each point adds FQ x (MU − best MU so far):
    # npo:    b .50 x .40 = .2000; a .20 x (.52 − .40) = .0240; c .05 x (.53 − .52) = .0005  -> .2245
    # simnpo: hi .90 x .30 = .2700; s1 .80 x (.59 − .30) = .2320; s0 adds nothing           -> .5020
    # all methods: the overall front is {hi, s1}                                           -> .5020
    assert got == pytest.approx({"npo": 0.2245, "simnpo": 0.502, "all methods": 0.502}, abs=1e-12)
    assert set(hv["reference_forget_quality"].to_list()) == {0.0}
    assert set(hv["reference_model_utility"].to_list()) == {0.0}
    assert dict(zip(hv["method"].to_list(), hv["front_size"].to_list(), strict=True)) == {
        "npo": 3,
        "simnpo": 2,
        "all methods": 2,
    }


def test_printed_front_keeps_long_hyperparameters_apart(
    make_run: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sampled gamma of 0.00798 and a lambda of 1.23e-05 print as their own columns, not run into
    their neighbours ("1.540.00798")."""
    run_dir = make_run("long-values")
    part = run_dir / "results" / "trials" / "trial_id=simnpo-s1" / "part-0.parquet"
    table = pq.read_table(part)
    for name, value in (("gamma", 0.00798), ("retain_weight", 1.23e-05)):
        column = table.schema.get_field_index(name)
        table = table.set_column(
            column, table.schema.field(column), pa.array([value], table.schema.field(column).type)
        )
    pq.write_table(table, part)
    print_front(str(run_dir / "results"), ["forget_quality", "model_utility"], "tofu")
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["trial", "method"])
    row = next(line for line in lines if line.split()[:1] == ["simnpo-s1"])
    assert len(row.split()) == len(header.split())
    assert row.split()[2:5] == ["2.5", "0.00798", "1.23e-05"]
