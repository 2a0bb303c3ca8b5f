"""The report's layout: the Pareto plot marks Retrain as the ideal corner and the FQ noise ceiling
when the results have one; report.html's tables (Table 2: 18 columns) fit the window."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from raysimnpo.analysis.fronts import front_table
from raysimnpo.analysis.load import completed_trials, load_runs, reference_trials
from raysimnpo.analysis.plots import pareto_figure
from raysimnpo.analysis.report import NOISE_CEILING, build_report, noise_ceilings


def figure_lines(res, ceilings=None):  # type: ignore[no-untyped-def]
    fig = pareto_figure(front_table(completed_trials(res)), reference_trials(res), res.labels, (), ceilings)
    [ax] = fig.axes
    return ax


def test_retrain_is_marked_as_the_ideal_corner(demo_run: Path) -> None:
    res = load_runs([str(demo_run)])
    retrain = reference_trials(res).filter(pl.col("kind") == "retrain").row(0, named=True)
    ax = figure_lines(res)
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    xs = {float(line.get_xdata()[0]) for line in dotted if line.get_xdata()[0] == line.get_xdata()[1]}
    ys = {float(line.get_ydata()[0]) for line in dotted if line.get_ydata()[0] == line.get_ydata()[1]}
    assert retrain["forget_quality"] in xs and retrain["model_utility"] in ys
    assert "Retrain = ideal corner" in [t.get_text() for t in ax.texts]
    assert all(line.get_label() != "FQ noise ceiling" for line in ax.get_lines())


def test_noise_ceiling_is_drawn_when_a_metric_row_holds_it(demo_run: Path) -> None:
    res = load_runs([str(demo_run)])
    row = {"run": "demo", "sweep": "demo", "trial_id": "retrain", "stage": "final", "epoch": None}
    extra = pl.DataFrame([{**row, "metric": NOISE_CEILING, "value": 0.25}], schema=res.metrics.schema)
    res = dataclasses.replace(res, metrics=pl.concat([res.metrics, extra]))
    assert noise_ceilings(res) == {"demo": 0.25}
    ax = figure_lines(res, noise_ceilings(res))
    [ceiling] = [line for line in ax.get_lines() if line.get_label() == "FQ noise ceiling"]
    assert list(ceiling.get_xdata()) == [0.25, 0.25]
    assert "FQ noise ceiling" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_tables_scroll_in_their_own_box(demo_run: Path, tmp_path: Path) -> None:
    report = build_report([str(demo_run)], tmp_path / "report")
    page = report.files["report.html"].read_text()
    assert page.count('<div class="wide paper"><table>') == 1
    assert len(re.findall(r"<table>", page)) == len(re.findall(r'<div class="wide[^"]*"><table>', page))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_fits_a_1280_px_window_in_chromium(demo_run: Path, tmp_path: Path) -> None:
    """The page's scroll width, measured by Chromium itself, is the window's: nothing overflows."""
    report = build_report([str(demo_run)], tmp_path / "report")
    probe = tmp_path / "probe.html"
    script = (
        "<script>addEventListener('load',()=>document.body.setAttribute('data-fit',"
        "document.documentElement.scrollWidth+' '+innerWidth))</script></body>"
    )
    probe.write_text(report.files["report.html"].read_text().replace("</body>", script))
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + ["--window-size=1280,900", "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    [(page, window)] = re.findall(r'data-fit="(\d+) (\d+)"', dom)
    assert int(page) == int(window) == 1280
