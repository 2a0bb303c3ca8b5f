"""analysis.length over the fixture sweep: FQ on the short / long halves by |y| (Figs. 2, A4), Pearson r
of gradient weight vs |y| (Fig. 5), and a run written without the `weights` table."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from raysimnpo.analysis import length, tables
from raysimnpo.analysis.load import load_runs
from raysimnpo.analysis.report import build_report

# 5 truth ratios against 5, fully separated: the smallest two-sided KS p-value, 2 / C(10, 5).
SEPARATED = 2 / 252


def test_length_halves_order_by_tokens_then_index() -> None:
    forget = pl.DataFrame({"index": [0, 1, 2, 3, 4], "answer_tokens": [5, 3, 3, 9, 1]})
    # sorted: 4 (1), 1 (3), 2 (3), 0 (5), 3 (9); an odd N leaves the extra example in the long half.
    assert length.length_halves(forget) == {"short": [4, 1], "long": [2, 0, 3]}


def test_length_split_on_the_fixture(demo_run: Path) -> None:
    res = load_runs([str(demo_run)])
    split = length.length_split(length.truth_ratios_by_half(res, tables.select_configurations(res)))
    fq = {(r["row"], r["half"]): r["forget_quality"] for r in split.iter_rows(named=True)}
    assert stats.ks_2samp([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]).pvalue == pytest.approx(SEPARATED)
    assert fq == pytest.approx(
        {
            ("Original", "short"): SEPARATED,  # every Original ratio is Retrain's + 1
            ("Original", "long"): SEPARATED,
            ("Retrain", "short"): 1.0,
            ("Retrain", "long"): 1.0,
            ("npo", "short"): SEPARATED,  # npo-c: separated on the short half only
            ("npo", "long"): 1.0,
            ("simnpo", "short"): 1.0,  # simnpo-s1 matches Retrain
            ("simnpo", "long"): 1.0,
        }
    )
    npo = split.filter(pl.col("row") == "npo").sort("half", descending=True)
    assert npo["trial_id"].to_list() == ["npo-c", "npo-c"]
    assert npo.select("half", "examples", "min_tokens", "max_tokens").rows() == [
        ("short", 5, 4, 8),
        ("long", 5, 9, 13),
    ]
    assert npo["ks_statistic"].to_list() == pytest.approx([1.0, 0.0])


def test_weight_correlations_of_the_selected_trials(demo_run: Path) -> None:
    res = load_runs([str(demo_run)])
    weights = length.selected_weights(res, tables.select_configurations(res))
    assert sorted(set(weights["trial_id"].to_list())) == ["npo-c", "simnpo-s1"]
    corr = length.weight_correlations(weights)
    assert corr.select("method", "epoch").rows() == [(m, e) for m in ("npo", "simnpo") for e in (1, 2, 3)]
    tokens = np.arange(4, 14, dtype=np.float64)
    simnpo_r = np.corrcoef(2.0 / tokens, tokens)[0, 1]  # w' = 2/|y|: r ≈ −0.95
    expected = [1.0] * 3 + [simnpo_r] * 3  # npo: w = 0.5 + 0.05|y|, exactly linear
    assert corr["pearson_r"].to_list() == pytest.approx(expected, abs=1e-9)
    assert simnpo_r == pytest.approx(-0.9459, abs=1e-4)
    assert corr["weight_mean"][0] == pytest.approx(0.5 + 0.05 * 8.5)


def test_report_writes_the_length_files_and_works_without_weights(
    make_run: Callable[[str], Path], tmp_path: Path
) -> None:
    run_dir = make_run("no-weights")
    shutil.rmtree(run_dir / "results" / "weights")  # as written before the table existed
    report = build_report([str(run_dir)], tmp_path / "report")
    assert report.weight_correlations.is_empty()
    header = (tmp_path / "report" / "weights.csv").read_text().splitlines()
    assert header == ["run,method,trial_id,epoch,examples,pearson_r,weight_mean,weight_std"]
    assert (tmp_path / "report" / "weights.png").read_bytes()[:4] == b"\x89PNG"
    split = pl.read_csv(tmp_path / "report" / "length_split.csv")
    assert split.height == 8  # Original, Retrain, npo, simnpo x two halves
    row = split.filter((pl.col("row") == "npo") & (pl.col("half") == "short"))
    assert row["forget_quality"][0] == pytest.approx(SEPARATED)
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "shortest 50%" in html and "Pearson" in html
