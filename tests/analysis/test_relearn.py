"""analysis.relearn and the report's relearning section: curves from `relearn` rows written next to the
fixture sweep (mean and sample std over random-relearn seeds, by hand) and the files the report writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from raysimnpo import results
from raysimnpo.analysis.load import load_runs
from raysimnpo.analysis.relearn import relearn_curves
from raysimnpo.analysis.report import build_report


def attack_rows(trial_id: str, method: str, attack: str, seed: int, fq: list[float]) -> list[dict]:
    return [
        {
            "sweep": "demo",
            "trial_id": trial_id,
            "method": method,
            "attack": attack,
            "seed": seed,
            "relearn_examples": 4,
            "epoch": epoch,
            "forget_quality": value,
            "forget_quality_ks_statistic": 0.5,
            "forget_prob": 0.1 * epoch,
            "forget_truth_ratio": 0.6,
        }
        for epoch, value in enumerate(fq)
    ]


def test_relearn_curves_and_report(make_run: Callable[[str], Path]) -> None:
    run_dir = make_run("demo")
    root = str(run_dir / "results")
    assert load_runs([str(run_dir)]).relearn.is_empty()  # a run without attacks reads as zero rows
    trials = results.read_table(root, "trials").to_pylist()
    trial_id = next(t["trial_id"] for t in trials if t["kind"] == "trial" and t["method"] == "simnpo")
    rows = (
        attack_rows(trial_id, "simnpo", "shortest", 0, [0.5, 0.2, 0.05])
        + attack_rows(trial_id, "simnpo", "random", 0, [0.5, 0.3, 0.1])
        + attack_rows(trial_id, "simnpo", "random", 1, [0.5, 0.1, 0.3])
    )
    results.write_relearn_results(root, trial_id, rows)
    with pytest.raises(ValueError, match="trial nonesuch has no results"):
        results.write_relearn_results(root, "nonesuch", attack_rows("nonesuch", "npo", "random", 0, [0.1]))
    with pytest.raises(ValueError, match=r"relearn\.attack: row 0 is 'longest'"):
        results.write_relearn_results(root, trial_id, attack_rows(trial_id, "simnpo", "longest", 0, [0.1]))

    curves = relearn_curves(load_runs([str(run_dir)]))
    random_ = curves.filter(pl.col("attack") == "random").sort("epoch")
    assert random_["seeds"].to_list() == [2, 2, 2]
    assert random_["fq_mean"].to_list() == pytest.approx([0.5, 0.2, 0.2])
    # sample std of (0.3, 0.1) and of (0.1, 0.3): |0.3 − 0.1| / √2
    assert random_["fq_std"].to_list() == pytest.approx([0.0, 0.1414214, 0.1414214], abs=1e-6)
    shortest = curves.filter(pl.col("attack") == "shortest").sort("epoch")
    assert shortest["fq_mean"].to_list() == pytest.approx([0.5, 0.2, 0.05])
    assert shortest["fq_std"].to_list() == [None, None, None]

    report = build_report([str(run_dir)])
    assert (report.out / "relearn.png").stat().st_size > 10_000
    written = pl.read_csv(report.out / "relearn.csv")
    assert written.height == 6 and set(written["attack"]) == {"shortest", "random"}
    assert "Relearning attacks (Fig. A3)" in (report.out / "report.html").read_text()
    # an epoch candidate of a trial with results (a selected earlier epoch) is attacked like a trial
    epoch = f"{trial_id}.epoch-2"
    results.write_relearn_results(root, epoch, attack_rows(epoch, "simnpo", "random", 0, [0.4]))
    assert epoch in results.trial_ids(root) or epoch in set(
        results.read_table(root, "relearn")["trial_id"].to_pylist()
    )
    with pytest.raises(ValueError, match=r"trial nonesuch\.epoch-2 has no results"):
        results.write_relearn_results(
            root, "nonesuch.epoch-2", attack_rows("nonesuch.epoch-2", "npo", "random", 0, [0.1])
        )


def test_relearn_cli_refuses_unknown_trials_and_missing_runs(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raysimnpo.cli.relearn import main

    storage = str(demo_run.parent)
    assert main(["tofu", "--storage", storage, "--set", "name=demo", "--trials", "nonesuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --trials: ['nonesuch'] are not completed trials of")
    assert "simnpo-s1" in err[0]  # the completed trials are listed
    assert main(["tofu", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results found" in err[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_relearn_cli_lists_whole_trials_and_names_their_epochs_by_pattern(
    make_run: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep evaluated every epoch has ~10 candidates per trial: the refusal lists the trials, not
    every epoch of them, and says how an epoch is named (`<trial>.epoch-<e>`, which --trials takes)."""
    from raysimnpo.cli.relearn import main

    run_dir = make_run("demo")
    root = results.results_root(str(run_dir.parent), "demo")
    trial = "simnpo-s1"  # evaluated after epochs 1 and 2 too
    tables = {name: results.read_table(root, name).to_pylist() for name in ("trials", "metrics", "examples")}
    mine = {name: [r for r in rows if r["trial_id"] == trial] for name, rows in tables.items()}
    epochs = [
        {**mine["metrics"][0], "stage": "epoch", "epoch": e, "metric": m, "value": v}
        for e in (1, 2)
        for m, v in (("forget_quality", 0.1 * e), ("model_utility", 0.5))
    ]
    results.write_trial_results(
        root, trial, trials=mine["trials"], metrics=mine["metrics"] + epochs, examples=mine["examples"]
    )
    assert main(["tofu", "--storage", str(run_dir.parent), "--set", "name=demo", "--trials", "nonesuch"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(", simnpo-s0, simnpo-s1 (and their evaluated epochs, <trial>.epoch-<epoch>)")
    assert f"{trial}.epoch-1" not in line
