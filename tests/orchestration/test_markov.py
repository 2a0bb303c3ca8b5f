"""`python -m raysimnpo.sweep markov`: bad values stop with one line; a short study writes its files."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raysimnpo.cli import sweep
from raysimnpo.config.base import SWEEPS_DIR

SHORT = {
    "seed": 0,
    "data": {"num_retain": 500, "num_forget1": 250, "num_forget2": 250},
    "pretrain": {"epochs": 1},
    "unlearn": {"iterations": 10, "eval_every": 5},
    # With the experiments' own β (a: NPO 0.2, SimNPO 4; b: NPO 1, SimNPO 4): 2 + 3 runs.
    "beta_grid": {"npo": [0.2], "simnpo": [4.0]},
}


def write_markov(tmp_path: Path) -> Path:
    spec = yaml.safe_load((SWEEPS_DIR / "markov.yaml").read_text())
    spec["name"] = "citest-markov"
    spec["storage"] = str(tmp_path / "runs")
    for section, values in SHORT.items():
        spec["markov"][section] = (
            {**spec["markov"][section], **values} if isinstance(values, dict) else values
        )
    path = tmp_path / "markov-short.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["FILE", "--set", "markov.unlearn.batch_size=0"],
            "markov.unlearn.batch_size: Input should be greater than 0",
        ),
        (
            ["FILE", "--set", "markov.experiments.b.beta.npo=-1"],
            "markov.experiments.b.beta.npo: Input should be greater than 0",
        ),
        (["FILE", "--set", "markov.pretrain=5"], "markov.pretrain: Input should be a valid dictionary"),
        (["FILE", "--set", "benchmark=tofu"], "benchmark: Input should be 'markov'"),
        (["FILE", "--storage", "/proc/raysimnpo-runs"], "storage: /proc/raysimnpo-runs is not writable"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    path = write_markov(tmp_path)
    argv = [str(path) if a == "FILE" else a for a in argv]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (tmp_path / "runs" / "citest-markov").exists()


@pytest.mark.ray
def test_short_study_writes_trajectories_and_figure(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_markov(tmp_path)
    assert sweep.main([str(path), "--set", "markov.unlearn.learning_rate=1e-3"]) == 0
    run_dir = tmp_path / "runs" / "citest-markov"

    table = pq.read_table(run_dir / "results" / "trajectories.parquet")
    assert table.column_names == [
        "experiment",
        "method",
        "beta",
        "iteration",
        "forget1_kl",
        "forget2_kl",
        "retain_kl",
        "schema_version",
    ]
    rows = table.to_pylist()
    runs = {(r["experiment"], r["method"], r["beta"]) for r in rows if r["method"] in ("npo", "simnpo")}
    assert runs == {
        ("a", "npo", 0.2),
        ("a", "simnpo", 4.0),
        ("b", "npo", 0.2),
        ("b", "npo", 1.0),
        ("b", "simnpo", 4.0),
    }
    assert len(rows) == 5 * 3 + 4  # evaluations at 0, 5, 10 per run + Original and Retrain per experiment
    for experiment, method, beta in runs:
        trajectory = [
            r for r in rows if (r["experiment"], r["method"], r["beta"]) == (experiment, method, beta)
        ]
        assert [r["iteration"] for r in trajectory] == [0, 5, 10]
        original = next(r for r in rows if r["experiment"] == experiment and r["method"] == "original")
        assert trajectory[0]["forget1_kl"] == pytest.approx(original["forget1_kl"], rel=1e-6)
        # Unlearning moves the model away from the forget chains.
        assert trajectory[-1]["forget1_kl"] > trajectory[0]["forget1_kl"]
    references = [r for r in rows if r["method"] in ("original", "retrain")]
    assert len(references) == 4 and all(r["beta"] is None and r["iteration"] is None for r in references)
    assert all(
        math.isfinite(r[k]) and r[k] >= 0 for r in rows for k in ("forget1_kl", "forget2_kl", "retain_kl")
    )
    assert {r["schema_version"] for r in rows} == {1}

    png = run_dir / "report" / "fig6.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # Retrain is shared by (a) and (b) (same retain data): three prepared models, not four.
    prepared = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs" / "prepared").iterdir())
    assert prepared == ["markov-original", "markov-original", "markov-retrain"]

    out = capsys.readouterr().out
    assert "experiment a: Forget2 short (length 5)" in out and "NPO β=0.2*" in out and "SimNPO β=4*" in out
    assert f"results:  {run_dir / 'results' / 'trajectories.parquet'}" in out
