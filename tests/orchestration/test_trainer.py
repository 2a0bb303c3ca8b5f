"""raysimnpo.orchestration.trainer: a 2-worker TorchTrainer (FSDP2 on gloo) unlearns a tiny model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from ray.train import WorkerGroupError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from raysimnpo.config.base import TrainSettings
from raysimnpo.config.run import DataSettings, ModelSettings, RunSettings
from raysimnpo.data.formatting import PROMPT_FORMAT_FILE
from raysimnpo.data.generators.tofu import TofuGeneratorConfig
from raysimnpo.data.sources import TofuSource
from raysimnpo.errors import UserInputError
from raysimnpo.methods import NPOParams, RMUParams, SimNPOParams
from raysimnpo.models import TinyModelConfig, load_model_and_tokenizer
from raysimnpo.orchestration.trainer import (
    check_trainer_settings,
    unlearn_with_torch_trainer,
    with_absolute_paths,
    worker_cause,
)
from raysimnpo.recipes.unlearn import unlearn_inputs, unlearn_model
from raysimnpo.recipes.workspace import Workspace, save_model, workspace
from raysimnpo.training.loop import GradientWeightLog, TrainingDiverged
from raysimnpo.training.scoring import score_sequences

SMALL = TinyModelConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    vocab_size=300,
)


def run_config(cache: Path) -> RunSettings:
    # forget10 of the small generated set: 6 forget and 54 retain QA; batch 4 leaves last batches of 2.
    return RunSettings(
        seed=3,
        device="cpu",
        cache_dir=str(cache),
        data=DataSettings(source=TofuSource(kind="generated", generator=TofuGeneratorConfig.preset("small"))),
        model=ModelSettings(name="tiny", dtype="float32", tiny=SMALL),
        unlearn=TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, warmup_epochs=0.0),
        # A small β: on a random-init model ℓ/|y| ≈ log V, and at β = 2.5 SimNPO's weight 2σ(−βℓ/|y|)/|y|
        # (eq. 5) is ~1e-6, so the forget term would not move the weights.
        method=SimNPOParams(beta=0.1, retain_weight=0.1),
    )


def forget_nll_per_token(model: PreTrainedModel, ws: Workspace) -> float:
    nll, n = score_sequences(model, ws.encode(ws.data.forget), 8, ws.pad_id)
    return float(nll.sum() / n.sum())


EPOCHS = 12


def kill_a_worker_after_the_first_epoch_state(run_folder: Path, killed: list[int]) -> None:
    """Wait until Ray Train's controller has registered an epoch's training state (its checkpoint
    manager snapshot in the run folder names it), then SIGKILL one of the run's Ray Train worker
    processes (as a lost node or an OOM kill would)."""
    from ray._private import state as gcs_state

    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if "epoch-" in snapshot.read_text():
                break
        time.sleep(0.05)
    for actor in gcs_state.actors().values():
        if actor.get("ActorClassName") == "RayTrainWorker" and actor["State"] == "ALIVE" and actor["Pid"]:
            os.kill(actor["Pid"], signal.SIGKILL)
            killed.append(actor["Pid"])
            return


@pytest.mark.ray
def test_two_workers_survive_a_killed_worker_and_write_a_loadable_checkpoint(
    ray_cluster: None, tmp_path: Path
) -> None:
    """Two FSDP2 workers unlearn for 12 epochs; one worker is SIGKILLed once an epoch's training
    state is registered. Ray Train restarts the group, the new workers resume from the last saved
    epoch, and the gathered checkpoint equals a single-process run that was never interrupted."""
    base = run_config(tmp_path / "cache")
    config = base.model_copy(update={"unlearn": base.unlearn.model_copy(update={"epochs": EPOCHS})})
    ws = workspace(config)  # writes the data and tokenizer caches the workers read
    original = load_model_and_tokenizer(
        "tiny",
        dtype="float32",
        cache_dir=tmp_path / "cache",
        tokenizer_corpus=ws.data.corpus(),
        seed=3,
        tiny=SMALL,
    ).model
    save_model(original, ws.tokenizer, ws.prompt_format, tmp_path / "original")

    killed: list[int] = []
    killer = threading.Thread(
        target=kill_a_worker_after_the_first_epoch_state, args=(tmp_path / "ray" / "simnpo-2w", killed)
    )
    killer.start()
    out = unlearn_with_torch_trainer(
        config,
        str(tmp_path / "original"),
        str(tmp_path / "unlearned"),
        num_workers=2,
        use_gpu=False,
        reference_nll=None,
        storage_path=str(tmp_path / "ray"),
        name="simnpo-2w",
        max_failures=1,
    )
    killer.join()

    assert len(killed) == 1
    assert out["metrics"]["resumed_from_epoch"] >= 1  # the restarted workers did not start over
    assert [row["epoch"] for row in out["epochs"]] == list(range(1, EPOCHS + 1))
    # Outside the run folder, so Ray Train copied the HF folder in as the run's checkpoint; the
    # epoch states were dropped once the model was reported.
    checkpoint = Path(out["checkpoint_path"])
    assert checkpoint == tmp_path / "ray" / "simnpo-2w" / "model"
    assert not list((tmp_path / "ray" / "simnpo-2w").glob("epoch-*"))
    assert out["output_path"] == str(tmp_path / "unlearned")
    assert out["metrics"]["epoch"] == EPOCHS and out["metrics"]["training_seconds"] > 0
    assert math.isfinite(out["metrics"]["forget_loss"]) and out["metrics"]["retain_loss"] > 0

    unlearned = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "unlearned", dtype=torch.float32)
    assert json.loads((checkpoint / PROMPT_FORMAT_FILE).read_text()) == {"prompt_format": "plain"}
    assert AutoTokenizer.from_pretrained(checkpoint).get_vocab() == ws.tokenizer.get_vocab()
    before, after = original.state_dict(), unlearned.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in copy.state_dict().items())
    assert all(not torch.equal(after[k], before[k]) for k in before)
    # Nothing lost to the kill: the same weights as one process that ran the epochs straight.
    log = GradientWeightLog(config.method)
    expected, summary = unlearn_model(ws, tmp_path / "original", on_forget_batch=log)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5, msg=name)
    for got, want in zip(out["epochs"], summary.epochs, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6)
    # SimNPO's w' (eq. 5) of every forget example in every epoch, those before the kill included.
    got = {(w["epoch"], w["index"]): w for w in out["weights"]}
    assert len(got) == len(out["weights"]) == EPOCHS * 6
    for w in log.rows:
        assert got[(w["epoch"], w["index"])]["weight"] == pytest.approx(w["weight"], rel=1e-4)
        assert got[(w["epoch"], w["index"])]["answer_tokens"] == w["answer_tokens"]
    # SimNPO raised the forget answers' NLL per token.
    assert forget_nll_per_token(unlearned, ws) > forget_nll_per_token(original, ws) + 0.02


def test_local_mode_takes_the_single_process_recipe_path(tmp_path: Path) -> None:
    """num_workers=0 runs the worker function in this process (no Ray workers, no FSDP): with the
    Original's ℓ_ref passed in, NPO gives bit-identical weights to unlearn_model."""
    config = run_config(tmp_path / "cache").model_copy(
        update={"method": NPOParams(beta=0.1, retain_weight=0.1)}
    )
    ws = workspace(config)
    original = load_model_and_tokenizer(
        "tiny",
        dtype="float32",
        cache_dir=tmp_path / "cache",
        tokenizer_corpus=ws.data.corpus(),
        seed=3,
        tiny=SMALL,
    ).model
    save_model(original, ws.tokenizer, ws.prompt_format, tmp_path / "original")
    inputs = unlearn_inputs(ws, config.method, original)
    assert inputs.forget_ref_nll is not None and inputs.idk_ref_nll is not None
    reference = (inputs.forget_ref_nll.tolist(), inputs.idk_ref_nll.tolist())

    out = unlearn_with_torch_trainer(
        config,
        str(tmp_path / "original"),
        str(tmp_path / "unlearned"),
        num_workers=0,
        use_gpu=False,
        reference_nll=reference,
        storage_path=str(tmp_path / "ray"),
        name="local",
    )

    assert out["checkpoint_path"] == out["output_path"] == str(tmp_path / "unlearned")
    expected, summary = unlearn_model(ws, tmp_path / "original", reference_nll=reference)
    assert out["epochs"] == summary.epochs
    unlearned = AutoModelForCausalLM.from_pretrained(tmp_path / "unlearned", dtype=torch.float32).state_dict()
    assert all(torch.equal(unlearned[k], v) for k, v in expected.state_dict().items())
    with pytest.raises(
        UserInputError,
        match=r"^reference_nll: 2 and 2 values but the forget set has 6 examples and 6 refusals",
    ):
        unlearn_with_torch_trainer(
            config,
            str(tmp_path / "original"),
            str(tmp_path / "again"),
            num_workers=0,
            use_gpu=False,
            reference_nll=([1.0, 2.0], [1.0, 2.0]),
            storage_path=str(tmp_path / "ray"),
            name="local-bad",
        )
    with pytest.raises(
        UserInputError, match=r"^reference_nll: 6 items; allowed: None or \(forget ℓ_ref, refusal"
    ):
        unlearn_with_torch_trainer(
            config,
            str(tmp_path / "original"),
            str(tmp_path / "again"),
            num_workers=0,
            use_gpu=False,
            reference_nll=reference[0],  # type: ignore[arg-type]
            storage_path=str(tmp_path / "ray"),
            name="local-bad",
        )


def test_settings_the_workers_cannot_run_are_refused_before_starting(tmp_path: Path) -> None:
    config = run_config(tmp_path / "cache")
    folder = tmp_path / "original"
    folder.mkdir()
    with pytest.raises(UserInputError, match="not a Hugging Face model folder"):
        check_trainer_settings(config, str(folder), num_workers=2, use_gpu=False)
    (folder / "config.json").write_text("{}")
    check_trainer_settings(config, str(folder), num_workers=2, use_gpu=False)
    with pytest.raises(
        UserInputError, match=r"^unlearn.batch_size: 4 cannot be split over 5 workers; allowed: >= 5$"
    ):
        check_trainer_settings(config, str(folder), num_workers=5, use_gpu=False)
    # RMU's frozen copy is taken before sharding: any number of workers runs it.
    rmu = config.model_copy(update={"method": RMUParams()})
    check_trainer_settings(rmu, str(folder), num_workers=2, use_gpu=False)
    with pytest.raises(UserInputError, match="device: cpu but use_gpu"):
        check_trainer_settings(config, str(folder), num_workers=2, use_gpu=True)


def test_relative_paths_are_resolved_for_workers_that_run_in_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    config = run_config(Path("cache")).model_copy(
        update={"data": DataSettings(source=TofuSource(kind="local", path="data"))}
    )
    resolved = with_absolute_paths(config)
    assert resolved.cache_dir == str(tmp_path / "cache")
    assert resolved.data.source.path == str(tmp_path / "data")
    assert resolved.model.name == "tiny" and resolved.method == config.method


def test_worker_errors_are_unwrapped_to_the_users_exception() -> None:
    # Ray Train 2.60 keeps each rank's own exception object in WorkerGroupError.worker_failures.
    user = UserInputError("reference_nll: 2 values but forget10 has 6 examples; allowed: one per example")
    assert worker_cause(WorkerGroupError("ranks 0, 1 failed", {1: user, 0: RuntimeError("x")})) is user
    diverged = TrainingDiverged("loss became nan at epoch 2")
    assert worker_cause(WorkerGroupError("rank 0 failed", {0: diverged})) is diverged
    other = WorkerGroupError("rank 0 failed", {0: RuntimeError("gloo timeout")})
    assert worker_cause(other) is other
