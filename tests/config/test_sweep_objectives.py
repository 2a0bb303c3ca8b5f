"""Sweep objectives are checked against the benchmark at load, before Ray starts: a metric the
benchmark does not report, or a mode against the metric's direction in `metrics.METRICS`, is one
`error:` line naming `search.objectives.<i>.metric` / `.mode`, the sweep file and what is allowed;
exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysimnpo.cli import sweep
from raysimnpo.config.sweep import load_sweep_config

ROOT = Path(__file__).resolve().parents[2]
TOFU_ALLOWED = (
    "forget_quality, model_utility, forget_prob, forget_rouge, forget_truth_ratio, retain_prob, "
    "retain_rouge, retain_truth_ratio, real_authors_prob, real_authors_rouge, real_authors_truth_ratio, "
    "world_facts_prob, world_facts_rouge, world_facts_truth_ratio, forget_quality_ks_statistic"
)


def sweep_file(tmp: Path, benchmark: str, objectives: list[dict[str, str]]) -> Path:
    spec = {
        "name": "objectives",
        "storage": str(tmp / "runs"),
        "run": {"benchmark": benchmark, "cache_dir": str(tmp / "cache")},
        "search": {"methods": ["simnpo"], "num_trials": 2, "objectives": objectives},
    }
    path = tmp / "objectives.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


CASES = [
    (
        "typo-in-metric",
        "tofu",
        [{"metric": "forget_qualty", "mode": "max"}],
        "search.objectives.0.metric: 'forget_qualty' is not a metric of benchmark tofu; "
        f"allowed: {TOFU_ALLOWED}",
    ),
    (
        "metric-of-another-benchmark",
        "tofu",
        [{"metric": "forget_quality", "mode": "max"}, {"metric": "mmlu", "mode": "max"}],
        f"search.objectives.1.metric: 'mmlu' is not a metric of benchmark tofu; allowed: {TOFU_ALLOWED}",
    ),
    (
        "mode-against-direction",
        "tofu",
        [{"metric": "forget_quality", "mode": "max"}, {"metric": "model_utility", "mode": "min"}],
        "search.objectives.1.mode: 'min' contradicts model_utility, where higher is better; allowed: max",
    ),
    (
        "lower-is-better-maximised",
        "wmdp",
        [{"metric": "wmdp_bio", "mode": "max"}],
        "search.objectives.0.mode: 'max' contradicts wmdp_bio, where lower is better; allowed: min",
    ),
    (
        "closest-to-zero-metric",
        "muse",
        [{"metric": "privleak", "mode": "min"}],
        "search.objectives.0.mode: privleak is best closest to 0, which neither max nor min expresses; "
        "allowed metrics of benchmark muse: verbmem_forget, knowmem_forget, knowmem_retain, privleak_abs",
    ),
]


@pytest.mark.parametrize(
    ("benchmark", "objectives", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_objective_is_refused_at_load(
    benchmark: str,
    objectives: list[dict[str, str]],
    message: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    path = sweep_file(tmp_path, benchmark, objectives)
    code = sweep.main([str(path)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: {path}: {message}"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_the_cli_refuses_a_bad_objective_in_its_own_process(tmp_path: Path) -> None:
    """`python -m raysimnpo.sweep`: exit 2, the one line, no traceback, no Ray started, nothing written."""
    path = sweep_file(tmp_path, "tofu", [{"metric": "forget_qualty", "mode": "max"}])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "raysimnpo.sweep", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path}: {CASES[0][3]}"]
    assert "Traceback" not in done.stdout + done.stderr and "Ray" not in done.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tofu", [("forget_quality", "max"), ("model_utility", "max")]),
        ("muse-news-generated", [("privleak_abs", "min"), ("knowmem_retain", "max")]),
        ("wmdp-generated", [("wmdp_forget", "max"), ("mmlu", "max")]),
    ],
)
def test_shipped_sweeps_have_objectives_of_their_benchmark(
    name: str, expected: list[tuple[str, str]]
) -> None:
    assert [(o.metric, o.mode) for o in load_sweep_config(name).search.objectives] == expected


def test_without_objectives_a_sweep_optimises_its_benchmark_defaults(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        yaml.safe_dump({"name": "plain", "run": {"benchmark": "wmdp"}, "search": {"methods": ["npo"]}})
    )
    loaded = load_sweep_config(str(path))
    assert [(o.metric, o.mode) for o in loaded.search.objectives] == [("wmdp_forget", "max"), ("mmlu", "max")]
