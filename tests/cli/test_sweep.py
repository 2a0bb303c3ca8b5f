"""raysimnpo/cli/sweep.py: what the driver tells a user who interrupts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raysimnpo.cli import sweep
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
