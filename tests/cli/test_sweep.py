"""raysimnpo/cli/sweep.py: what the driver tells a user who interrupts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raysimnpo.cli import sweep
from raysimnpo.results.storage import open_storage
from tests.sweep_files import write_citest_sweep


def interrupt(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("trials_started", "advice"),
    [
        (False, "[sweep] interrupted before the trials; run the same command to start again"),
        (True, "[sweep] interrupted; run the same command with --resume to continue"),
    ],
)
def test_an_interrupt_says_whether_to_resume_or_start_again(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    trials_started: bool,
    advice: str,
) -> None:
    # --resume on a storage without the sweep's Tune state is refused, so the advice must follow it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sweep, "run_validated", interrupt)
    file = write_citest_sweep(tmp_path)
    args = [str(file)]
    if trials_started:
        (tmp_path / "runs" / "citest" / "tune").mkdir(parents=True)
        args.append("--resume")
    assert sweep.main(args) == 130
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(f"{advice} (log: {tmp_path / 'runs' / 'citest' / 'logs'}")


def started_sweep(tmp: Path) -> Path:
    """A sweep file whose sweep has started: its Tune state folder and the `sweep.json` its start wrote."""
    from raysimnpo.config.sweep import load_sweep_config

    file = write_citest_sweep(tmp)
    run_dir = tmp / "runs" / "citest"
    (run_dir / "tune").mkdir(parents=True)
    sweep.write_sweep_file(load_sweep_config(str(file)), open_storage(str(tmp / "runs")))
    assert (run_dir / "sweep.json").is_file()
    return file


def test_resume_refuses_a_setting_its_trials_ran_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sweep, "run_validated", interrupt)  # reaching the run is a failure here
    file = started_sweep(tmp_path)
    args = [str(file), "--resume", "--set", "run.unlearn.learning_rate=0.5", "--set", "search.seed=3"]
    assert sweep.main(args) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(
        "error: --resume: run.unlearn.learning_rate is 0.5, but the sweep started with 1e-05 "
        f"({tmp_path / 'runs' / 'citest' / 'sweep.json'}) (and 1 more); a resumed sweep keeps the settings"
    )
    assert line.endswith("for new settings start a new sweep (--set name=...)")


def test_resume_may_extend_the_sweep_and_move_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    reached = []
    monkeypatch.setattr(sweep, "run_validated", lambda *a, **k: reached.append(True))
    file = started_sweep(tmp_path)
    changes = ["search.num_trials=5", "search.max_concurrent_trials=1", "resources.cpus_per_worker=0.5"]
    assert sweep.main([str(file), "--resume", *(a for c in changes for a in ("--set", c))]) == 0
    assert reached == [True]
