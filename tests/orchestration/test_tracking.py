"""`tracking:` in a sweep file: each trial becomes an MLflow run (a real local file store, no server)
or a W&B run (offline mode), with its parameters, per-epoch metrics, final metrics and checkpoint."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from raysimnpo import results
from raysimnpo.config.sweep import SweepConfig, load_sweep_config
from raysimnpo.errors import UserInputError
from raysimnpo.results.storage import open_storage

EPOCH_LOSSES = {1: 2.5, 2: 1.75, 3: 1.25}
FINAL = {"forget_quality": 0.125, "model_utility": 0.375}


def tracked_sweep(tmp_path: Path, tracking: dict[str, Any]) -> SweepConfig:
    return SweepConfig.model_validate(
        {"name": "tracked", "storage": str(tmp_path / "runs"), "tracking": tracking}
    )


def run_tracked(tmp_path: Path, sweep: SweepConfig) -> str:
    from ray import tune

    from raysimnpo.orchestration.tracking import tracking_callbacks

    storage = open_storage(sweep.storage)
    root = results.results_root(storage.uri, sweep.name)

    # Defined here, so that Ray pickles it by value (the test module is not importable in a worker).
    def fake_trial(config: dict[str, Any]) -> None:
        """What `unlearning_trial` leaves behind, without the unlearning: the trial's rows (epoch
        losses, final metrics, checkpoint) written before it reports its final metrics."""
        trial_id = tune.get_context().get_trial_id()
        now = dt.datetime.now(dt.UTC)
        row = {
            "sweep": "tracked",
            "trial_id": trial_id,
            "kind": "trial",
            "method": config["method"],
            "params_json": json.dumps(config, sort_keys=True),
            "learning_rate": 1e-3,
            "epochs": len(EPOCH_LOSSES),
            "batch_size": 4,
            "seed": 0,
            "status": "completed",
            "error": None,
            "started_at": now,
            "finished_at": now,
            "checkpoint": f"/checkpoints/{trial_id}",
            **FINAL,
        }
        metrics = [
            {
                "sweep": "tracked",
                "trial_id": trial_id,
                "stage": "epoch",
                "epoch": e,
                "metric": "forget_loss",
                "value": v,
            }
            for e, v in EPOCH_LOSSES.items()
        ] + [
            {
                "sweep": "tracked",
                "trial_id": trial_id,
                "stage": "final",
                "epoch": None,
                "metric": k,
                "value": v,
            }
            for k, v in FINAL.items()
        ]
        results.write_trial_results(root, trial_id, trials=[row], metrics=metrics)
        tune.report(dict(FINAL))

    tuner = tune.Tuner(
        fake_trial,
        # As OptunaSearch's define-by-run space reaches Tune: "simnpo/method.beta" unflattened at "/".
        param_space={"method": "simnpo", "simnpo": {"method.beta": 2.5}},
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(tmp_path / "runs" / "tracked"),
            callbacks=tracking_callbacks(sweep, storage),
            verbose=0,
        ),
    )
    result = tuner.fit().get_best_result(metric="forget_quality", mode="max")
    assert result.error is None
    return result.metrics["trial_id"]


@pytest.mark.ray
def test_mlflow_local_store_has_params_epochs_final_metrics_and_checkpoint(
    tmp_path: Path, ray_cluster: None
) -> None:
    import mlflow

    trial_id = run_tracked(tmp_path, tracked_sweep(tmp_path, {"kind": "mlflow"}))
    store = f"sqlite:///{tmp_path / 'runs' / 'tracked' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracked")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "simnpo"
    assert run.data.params["simnpo/method.beta"] == "2.5"
    assert run.data.params["checkpoint"] == f"/checkpoints/{trial_id}"
    assert run.data.tags["sweep"] == "tracked"
    assert run.data.metrics["forget_quality"] == pytest.approx(0.125)
    assert run.data.metrics["model_utility"] == pytest.approx(0.375)
    history = client.get_metric_history(run.info.run_id, "epoch/forget_loss")
    assert sorted((m.step, m.value) for m in history) == sorted(EPOCH_LOSSES.items())


def wandb_offline_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The history rows and the config of an offline run's `.wandb` file (a LevelDB-style log:
    a 7-byte file header, then 32 KiB blocks of records each with a 7-byte header of checksum,
    length and type FULL/FIRST/MIDDLE/LAST; the payloads are wandb's protobuf Records)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    payloads, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero-filled tail
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            payloads.append(pending)
            pending = b""
    history, config = [], {}
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # A key with "/" is stored split into `nested_key`.
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "config":
            config.update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.config.update
                }
            )
        elif kind == "run":
            config.update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.run.config.update
                }
            )
    return history, config


@pytest.mark.ray
def test_wandb_offline_run_folder_holds_the_trial(
    tmp_path: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test (tracking sets it too)
    trial_id = run_tracked(tmp_path, tracked_sweep(tmp_path, {"kind": "wandb", "mode": "offline"}))
    [folder] = (tmp_path / "runs" / "tracked" / "wandb").glob(f"offline-run-*-{trial_id}")
    history, config = wandb_offline_records(folder / f"run-{trial_id}.wandb")
    epochs = {row["_step"]: row["epoch/forget_loss"] for row in history if "epoch/forget_loss" in row}
    assert epochs == EPOCH_LOSSES
    [final] = [row for row in history if "forget_quality" in row]
    assert final["_step"] == 3
    assert final["forget_quality"] == pytest.approx(0.125)
    assert final["model_utility"] == pytest.approx(0.375)
    assert config["checkpoint"] == f"/checkpoints/{trial_id}"
    assert config["simnpo"] == {"method.beta": 2.5}  # W&B shows it as simnpo.method.beta


def test_a_secret_in_the_sweep_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "tracking": {"kind": "wandb", "api_key": "abc"}}))
    with pytest.raises(
        UserInputError, match=r"tracking\.api_key: secrets are read from the environment only"
    ):
        load_sweep_config(str(path), [])
