"""A sweep whose storage is `s3://...` (moto's S3 server on loopback): results, checkpoints, the
prepared models and the Optuna study land in the bucket, and `python -m raysimnpo.report` reads
the results back from the URI."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from raysimnpo import results
from raysimnpo.cli import report, sweep

from .test_sweep import write_sweep


@pytest.mark.ray
def test_sweep_on_s3_storage_reads_back_with_report(
    tmp_path: Path, s3_bucket: str, ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3  # installed with moto (dev extras); s3_bucket skips the test without them

    storage = f"{s3_bucket}/runs"
    path = write_sweep(
        tmp_path,
        storage=storage,
        search={"methods": ["simnpo"], "num_trials": 2, "max_concurrent_trials": 1},
    )
    assert sweep.main([str(path)]) == 0
    assert not (tmp_path / "runs").exists()  # nothing went to a local run folder

    root = results.results_root(storage, "citest")
    trials = results.read_table(root, "trials").to_pylist()
    assert sorted(t["kind"] for t in trials) == ["original", "retrain", "trial", "trial"]
    done = [t for t in trials if t["kind"] == "trial"]
    assert all(t["status"] == "completed" for t in done)

    bucket = s3_bucket.removeprefix("s3://")
    keys = {
        o["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    }
    for t in done:  # the row points at the uploaded checkpoint, a Hugging Face folder
        assert t["checkpoint"] == f"{storage}/citest/checkpoints/{t['trial_id']}"
        assert f"runs/citest/checkpoints/{t['trial_id']}/config.json" in keys
        assert f"runs/citest/checkpoints/{t['trial_id']}/model.safetensors" in keys
    for kind in ("original", "retrain"):
        row = next(t for t in trials if t["kind"] == kind)
        assert row["checkpoint"].startswith(f"{storage}/prepared/{kind}-")
        assert row["checkpoint"].removeprefix(f"{s3_bucket}/") + "/config.json" in keys
    assert any(k.startswith("runs/citest/tune/") for k in keys)  # Tune's state, for --resume

    # The study was copied to the bucket; it holds both trials and no credential.
    study = tmp_path / "study.sqlite"
    boto3.client("s3").download_file(bucket, "runs/citest/optuna.sqlite", str(study))
    with sqlite3.connect(study) as db:
        assert [r[0] for r in db.execute("SELECT state FROM trials")] == ["COMPLETE"] * 2
    assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in study.read_bytes()

    capsys.readouterr()
    out = tmp_path / "report"
    assert report.main([f"{storage}/citest", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "citest: simnpo" in printed and (out / "table.md").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/runs", "storage: s3://... holds credentials"),
        ("s3://raysimnpo-no-such-bucket/runs", "storage: s3://raysimnpo-no-such-bucket/runs is not writable"),
    ],
)
def test_bad_storage_uri_exits_2_before_ray(
    tmp_path: Path, s3_server: str, capsys: pytest.CaptureFixture[str], storage: str, expected: str
) -> None:
    import ray

    ray_was_running = ray.is_initialized()
    assert sweep.main([str(write_sweep(tmp_path)), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --storage: {expected}"), err
    assert "wJalrXUtnFEMI" not in err[0]
    assert ray.is_initialized() == ray_was_running


def test_storage_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RAYSIMNPO_STORAGE (set on a cluster's nodes) is the default; --storage wins over it."""
    monkeypatch.setenv("RAYSIMNPO_STORAGE", "/proc/raysimnpo-from-env")
    path = str(write_sweep(tmp_path))
    assert sweep.main([path]) == 2  # refused before Ray: /proc is not writable
    assert "storage: /proc/raysimnpo-from-env is not writable" in capsys.readouterr().err
    assert sweep.main([path, "--storage", "/proc/raysimnpo-from-flag"]) == 2
    assert "storage: /proc/raysimnpo-from-flag is not writable" in capsys.readouterr().err
