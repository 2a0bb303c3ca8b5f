"""Fine-tuning Original and Retrain on the trial's TorchTrainer workers (`prepare.prepare_on_workers`):
two FSDP2 workers on gloo write the weights and losses the in-process fine-tune gives, into the
prepared folders the in-process prepare uses, which then only evaluates them; a second call trains
nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from raysimnpo.config import SweepConfig
from raysimnpo.data.formatting import PROMPT_FORMAT_FILE
from raysimnpo.data.generators.tofu import TofuGeneratorConfig
from raysimnpo.orchestration import prepare
from raysimnpo.orchestration.cluster import trials_use_torch_trainer
from raysimnpo.orchestration.trial import SharedWorkspace
from raysimnpo.recipes import prepare as prepared_models
from raysimnpo.recipes.workspace import workspace
from raysimnpo.results.storage import Storage, open_storage

WEIGHTS_TOLERANCE = 1e-5  # max |Δw|
LOSS_TOLERANCE = 1e-5  # relative, per epoch


def sweep_config(tmp_path: Path) -> SweepConfig:
    # forget10 of the small generated set: 60 QA train the Original and 54 Retrain; batches of 8
    # leave last batches of 4 and 6, split over the two ranks.
    return SweepConfig.model_validate(
        {
            "name": "prep",
            "storage": str(tmp_path / "runs"),
            "run": {
                "seed": 3,
                "device": "cpu",
                "cache_dir": str(tmp_path / "cache"),
                "data": {
                    "source": {
                        "kind": "generated",
                        "generator": TofuGeneratorConfig.preset("small").model_dump(mode="json"),
                    }
                },
                "model": {
                    "name": "tiny",
                    "dtype": "float32",
                    "tiny": {
                        "hidden_size": 32,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 2,
                        "num_key_value_heads": 2,
                        "intermediate_size": 64,
                        "max_position_embeddings": 128,
                        "vocab_size": 300,
                    },
                },
                "prepare": {
                    "epochs": 2,
                    "batch_size": 8,
                    "learning_rate": 3e-3,
                    "warmup_epochs": 0.5,
                    "max_length": 128,
                },
                "evaluation": {"batch_size": 64, "max_new_tokens": 4, "generation_limit": 2},
            },
            "resources": {"workers": 2, "cpus_per_worker": 0.5},  # the session Ray has 2 CPUs
        }
    )


@pytest.mark.ray
def test_two_fsdp2_workers_fine_tune_the_in_process_weights_into_the_prepared_folders(
    ray_cluster: None, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    sweep = sweep_config(tmp_path)
    assert trials_use_torch_trainer(sweep)
    storage = open_storage(sweep.storage)
    ws = workspace(sweep.run)
    lines: list[str] = []
    started = time.perf_counter()
    prepare.prepare_on_workers(sweep, storage, ws, SharedWorkspace(ray.put(ws)), lines.append)
    print(f"prepare on 2 workers: {time.perf_counter() - started:.1f} s")
    assert lines[0] == "[prepare] fine-tuning Retrain, Original on a TorchTrainer of 2 FSDP2 workers"

    root = Path(sweep.storage) / "prepared"
    jobs = prepared_models.fine_tunes(sweep.run, root)
    assert [j.name for j in jobs] == ["Retrain", "Original"]
    for job in jobs:
        folder = job.folder / "model"
        assert (folder / PROMPT_FORMAT_FILE).is_file() and (folder / "tokenizer.json").is_file()
        on_workers = json.loads((folder / "training.json").read_text())
        assert on_workers["workers"] == 2
        model, summary = prepared_models.finetune_weights(
            ws, job.name, tmp_path / "in-process" / job.folder.name, job.kind
        )
        expected = model.state_dict()
        got = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
        weights = max(float((got[k] - v).abs().max()) for k, v in expected.items())
        losses = [
            abs(w["loss"] - s["loss"]) / abs(s["loss"])
            for w, s in zip(on_workers["epochs"], summary.epochs, strict=True)
        ]
        print(f"{job.name}: max |Δw| {weights:.3g}, max relative loss difference {max(losses):.3g}")
        assert summary.epochs[0]["loss"] > summary.epochs[1]["loss"]  # it trained
        assert weights <= WEIGHTS_TOLERANCE, job.name
        assert max(losses) <= LOSS_TOLERANCE, job.name
        assert [r["epoch"] for r in on_workers["epochs"]] == [1, 2]

    # Made before: nothing is trained again, and the prepare only evaluates the workers' weights.
    again: list[str] = []
    prepare.prepare_on_workers(sweep, storage, ws, SharedWorkspace(ray.put(ws)), again.append)
    assert again == []
    logs: list[str] = []
    prepared = prepared_models.prepare(ws, log=logs.append, root=root)
    assert sum("weights cached" in line for line in logs) == 2
    assert not any("fine-tuning" in line for line in logs)
    assert prepared.retrain is not None and prepared.retrain.metrics["forget_quality"] == 1.0


def test_weights_made_on_workers_reach_a_remote_storage_and_come_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a remote storage rank 0 uploads each model it wrote (config.json last, so a folder with it
    is complete), and the prepare task fetches a folder that has weights but no evaluation yet."""
    from raysimnpo.orchestration.trainer import upload_model

    storage = open_storage(str(tmp_path / "bucket"))  # any pyarrow filesystem takes the same calls
    final = tmp_path / "node-a" / "original-abc"
    (final / "model").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", PROMPT_FORMAT_FILE):
        (final / "model" / name).write_text(name)
    uploaded: list[str] = []
    put = Storage.upload_file

    def recording(self: Storage, local: Path, *parts: str) -> None:
        uploaded.append(parts[-1])
        put(self, local, *parts)

    monkeypatch.setattr(Storage, "upload_file", recording)
    upload_model(storage, final)
    assert uploaded[-1] == "config.json" and sorted(uploaded) == sorted(
        p.name for p in (final / "model").iterdir()
    )
    upload_model(storage, final)  # there already: not sent again
    assert len(uploaded) == 4

    elsewhere = tmp_path / "node-b" / "original-abc"
    prepare._sync_prepared(storage, (elsewhere,), "eval-key", upload=False)
    assert sorted(p.name for p in (elsewhere / "model").iterdir()) == sorted(uploaded)


def test_a_new_storage_takes_every_prepared_model_from_the_cache_the_second_retrain_too(
    tmp_path: Path,
) -> None:
    """The noise ceiling's second Retrain is shared with the cache like the Original and Retrain: a
    sweep on a new `--storage` links it in instead of fine-tuning it again."""
    base = sweep_config(tmp_path).run
    run = base.model_copy(update={"evaluation": base.evaluation.model_copy(update={"noise_ceiling": True})})
    cache_root = Path(run.cache_dir) / "prepared"
    cached = prepared_models.prepared_folders(run, cache_root)
    # Original, Retrain, second Retrain
    assert len(cached) == 3 and len({folder.name for folder in cached}) == 3
    for folder in cached:
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text(folder.name)
    root = tmp_path / "new-storage" / "prepared"
    prepare._share_with_cache(run, root, into_storage=True)
    for folder in cached:
        linked = root / folder.name / "model" / "config.json"
        assert linked.read_text() == folder.name
        assert linked.stat().st_ino == (folder / "model" / "config.json").stat().st_ino  # a hard link
