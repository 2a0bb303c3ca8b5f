"""python -m raysimnpo.report: the files it writes, several runs, --export-best, and bad input (exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysimnpo.analysis.report import REPORT_FILES
from raysimnpo.cli.report import main


@pytest.fixture(scope="module")
def cli_run(
    make_run: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    """One CLI call on a fresh run: report into RUN_DIR/report and export simnpo's selected checkpoint."""
    run_dir = make_run("demo")
    to = tmp_path_factory.mktemp("export") / "best-simnpo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(run_dir), "--export-best", "simnpo", "--to", str(to)])
    assert code == 0
    return run_dir, to, stdout.getvalue()


def test_cli_writes_every_report_file(cli_run: tuple[Path, Path, str]) -> None:
    run_dir, _, stdout = cli_run
    report = run_dir / "report"
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)
    for name in ("pareto.png", "curves.png", "weights.png", "truth_ratio_by_length.png", "relearn.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = pl.read_parquet(report / "pareto.parquet")
    assert front.height == 7  # completed trials only: no Original, Retrain or failed trial
    assert {"rank_method", "rank_overall", "dominated", "on_method_front"} <= set(front.columns)
    table = pl.read_csv(report / "table.csv")
    assert table["row"].to_list() == ["Original", "Retrain", "npo", "simnpo"]
    hv = pl.read_csv(report / "hypervolume.csv")
    assert hv.filter(pl.col("method") == "npo")["hypervolume"][0] == pytest.approx(0.2245)
    weights = pl.read_csv(report / "weights.csv")
    assert weights.select("method", "trial_id", "epoch").rows() == [
        (m, t, e) for m, t in (("npo", "npo-c"), ("simnpo", "simnpo-s1")) for e in (1, 2, 3)
    ]
    assert weights.filter(pl.col("method") == "npo")["pearson_r"].to_list() == pytest.approx([1.0] * 3)
    split = pl.read_csv(report / "length_split.csv")
    assert split.select("row", "half").rows()[:2] == [("Original", "short"), ("Original", "long")]
    html = (report / "report.html").read_text(encoding="utf-8")
    assert (
        html.count('src="data:image/png;base64,') == 7
    )  # pareto, curves, weights, lengths, relearn, search x2
    assert "http://" not in html and "https://" not in html  # offline: nothing fetched
    assert "Reference point (FQ = 0, MU = 0)" in html and "<td>simnpo-s1</td>" in html
    assert "simnpo" in stdout and "npo-c" in stdout


def test_cli_exports_the_selected_checkpoint(cli_run: tuple[Path, Path, str]) -> None:
    _, to, stdout = cli_run
    assert json.loads((to / "config.json").read_text()) == {"trial": "simnpo-s1"}
    assert "exported simnpo trial simnpo-s1" in stdout


def test_cli_compares_several_runs_one_given_as_uri(
    make_run: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = make_run("sweep-a"), make_run("sweep-b")
    out = tmp_path / "comparison"
    assert main([str(first), second.as_uri(), "--out", str(out)]) == 0
    front = pl.read_parquet(out / "pareto.parquet")
    assert front.group_by("run").len().sort("run").rows() == [("sweep-a", 7), ("sweep-b", 7)]
    text = (out / "table.md").read_text(encoding="utf-8")
    assert "## Run `sweep-a`" in text and "## Run `sweep-b`" in text
    assert not (first / "report").exists()


def _single_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_cli_empty_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no results found" in _single_error_line(capsys)
    assert not (tmp_path / "empty" / "report").exists()


def test_cli_unknown_schema_version_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "future" / "results" / "trials" / "trial_id=t1"
    folder.mkdir(parents=True)
    table = pa.table({"trial_id": ["t1"]}).replace_schema_metadata({b"raysimnpo.schema_version": b"7"})
    pq.write_table(table, folder / "part-0.parquet")
    assert main([str(tmp_path / "future")]) == 2
    assert "results schema version 7 is not supported" in _single_error_line(capsys)
    assert not (tmp_path / "future" / "report").exists()


def test_cli_names_a_corrupt_results_file_and_exits_2(
    make_run: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A results file cut short (a disk that filled up, a copy that stopped) is named, not a crash."""
    run_dir = make_run("demo")
    damaged = sorted((run_dir / "results" / "metrics").glob("trial_id=*/part-0.parquet"))[0]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 3])
    assert main([str(run_dir)]) == 2
    line = _single_error_line(capsys)
    assert f"{damaged}: not a readable Parquet file" in line and "delete it and re-run that trial" in line
    assert not (run_dir / "report").exists()


def test_cli_unknown_method_lists_methods_present(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(demo_run), "--out", str(tmp_path / "r"), "--export-best", "ga", "--to", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "methods present: npo, simnpo" in _single_error_line(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


def test_cli_several_runs_need_out(
    demo_run: Path, make_run: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(demo_run), str(make_run("other"))]) == 2
    assert "--out" in _single_error_line(capsys)


def test_cli_a_run_given_twice_is_refused(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # its trials would count twice (the same folder, spelt with a trailing slash the second time)
    assert main([str(demo_run), f"{demo_run}/", "--out", str(tmp_path / "r")]) == 2
    assert _single_error_line(capsys) == (
        f"error: RUN_DIR: {demo_run}/ is {demo_run} again; give each run folder once\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_cli_a_seed_numpy_refuses_is_refused(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    assert main([str(demo_run), "--out", str(tmp_path / "r"), "--seed", str(seed)]) == 2
    assert _single_error_line(capsys) == f"error: --seed: {seed}; give a whole number 0 to 4294967295\n"


@pytest.mark.parametrize("flag", ["--out", "--to"])
def test_cli_a_folder_that_cannot_be_made_is_refused_before_writing(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad, good = str(blocker / "report"), str(tmp_path / "ok")
    out, to = (bad, good) if flag == "--out" else (good, bad)
    assert main([str(demo_run), "--out", out, "--export-best", "simnpo", "--to", to]) == 2
    assert _single_error_line(capsys).startswith(f"error: {flag}: {bad} is not writable (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made
