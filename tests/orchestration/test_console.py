"""The sweep's console: our progress and errors only, Ray's and transformers' output in
`<run>/logs/`; `python -m raysimnpo.sweep` and the callable `raysimnpo.sweep(...)` run the same sweep,
and a sweep on a new storage reuses the prepared models made for another one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import raysimnpo

from .test_sweep import write_sweep

OUR_LINE = re.compile(
    r"^(\[sweep\] |\[prepare\] |\[plan\] |\d+ trials completed|  |Pareto front|results: |study: |time: |$)"
)


@pytest.mark.ray
def test_quiet_console_then_a_second_storage_reuses_the_prepared_models(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    search = {
        "methods": ["simnpo"],
        "space": {"simnpo": {"method.beta": {"low": 1.0, "high": 4.0}}},
        "num_trials": 2,
        "max_concurrent_trials": 2,
    }
    path = write_sweep(tmp_path, search=search)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "raysimnpo.sweep", str(path), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert done.stderr == ""
    assert [line for line in lines if not OUR_LINE.match(line)] == []
    progress = [line for line in lines if re.match(r"\[sweep\] \d+/2 done", line)]
    assert [line.split()[1] for line in progress] == ["1/2", "2/2"]  # one line per finished trial
    assert "[prepare] fine-tuning Retrain and Original at the same time (1 CPU each)" in lines
    [log] = (tmp_path / "runs" / "citest" / "logs").glob("sweep-*.log")
    assert f"[sweep] Ray and library output: {log} (--verbose shows it here)" in lines
    text = log.read_text()
    assert "Started a local Ray instance" in text and "Writing model shards" not in text

    # The callable, on another storage: the models prepared for the first come from the cache.
    second = tmp_path / "other-runs"
    run_dir = raysimnpo.sweep(str(path), storage=str(second), overrides=["search.num_trials=1"])
    assert run_dir == str(second / "citest")
    out = capsys.readouterr().out
    assert (
        f"[prepare] Original and Retrain were made before (here or in {tmp_path / 'cache' / 'prepared'})"
        in out
    )
    assert "at the same time" not in out  # nothing fine-tuned again
    for kind in ("original", "retrain"):
        [here] = (second / "prepared").glob(f"{kind}-*/model/model.safetensors")
        [first] = (tmp_path / "runs" / "prepared").glob(f"{kind}-*/model/model.safetensors")
        assert here.stat().st_ino == first.stat().st_ino  # hard links: no second copy on disk
    frames = raysimnpo.load(run_dir)
    assert frames.trials.filter(frames.trials["kind"] == "trial").height == 1


class FailedTrial:
    """What Progress reads of a Tune trial that failed: its id, status and error text."""

    trial_id = "a1b2c3d4"
    status = "ERROR"

    def get_error(self) -> str:
        return (
            'Traceback (most recent call last):\n  File "trial.py", line 9, in unlearning_trial\n'
            "raysimnpo.orchestration.trial.TrialFailed: trial a1b2c3d4 diverged: loss is nan\n"
        )


def test_a_failed_trial_shows_one_line_with_its_reason_and_the_log(tmp_path: Path) -> None:
    import optuna

    from raysimnpo.orchestration.tuner import Progress

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.sqlite'}")
    study = optuna.create_study(study_name="demo", storage=storage, directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # the searcher's tell
    lines: list[str] = []
    objectives = [("forget_quality", "max")]
    progress = Progress(
        3, lines.append, objectives, tmp_path / "optuna.sqlite", "demo", log_file=tmp_path / "sweep.log"
    )
    trial = FailedTrial()
    progress.on_trial_error(0, [trial], trial)
    assert lines[0].startswith("[sweep] 0/3 done, 0 running, 1 failed")
    assert lines[1:] == [
        "[sweep] trial a1b2c3d4 failed: raysimnpo.orchestration.trial.TrialFailed: trial a1b2c3d4 "
        f"diverged: loss is nan (log: {tmp_path / 'sweep.log'})"
    ]
