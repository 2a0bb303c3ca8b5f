"""TOFU with released Original / Retrain models (open-unlearning's `..._full` / `..._retainXX`): the
shipped sweep files validate offline (hub ids checked for form only), a local folder of the same
layout is used as it is (evaluated once, cached, never fine-tuned), and bad settings are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from raysimnpo.config.base import SWEEPS_DIR
from raysimnpo.config.run import RunSettings
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.errors import UserInputError
from raysimnpo.recipes.prepare import as_is_model, original_key, prepare, prepared_dirs, retrain_key
from raysimnpo.recipes.workspace import initial_model, workspace
from raysimnpo.training.resource_plan import check, plan_for
from tests.recipes.small_run import run_settings

pytestmark = pytest.mark.usefixtures("single_thread")

RELEASED_SWEEPS = sorted(p.stem for p in SWEEPS_DIR.glob("tofu-*-released-*.yaml"))


def test_six_released_model_sweeps_ship() -> None:
    assert [
        f"tofu-{model}-released-{split}"
        for model in ("llama2-7b", "llama3.2-1b")
        for split in ("forget01", "forget05", "forget10")
    ] == RELEASED_SWEEPS


@pytest.mark.parametrize("name", RELEASED_SWEEPS)
def test_released_sweep_validates_offline_and_fits_an_8_gpu_node(name: str) -> None:
    sweep = load_sweep_config(name)
    split = sweep.run.data.forget_split
    base = "Llama-2-7b-chat-hf" if "llama2-7b" in name else "Llama-3.2-1B-Instruct"
    assert sweep.run.data.original_model == f"open-unlearning/tofu_{base}_full"
    assert sweep.run.data.retrain_model == f"open-unlearning/tofu_{base}_retain{100 - int(split[-2:]):02d}"
    assert as_is_model(sweep.run, "Original") == sweep.run.data.original_model
    # The paper's ranges (appendix C.1): SimNPO β ∈ [2.5, 5.5] for forget10, [1.5, 3.5] otherwise.
    beta = sweep.search.space["simnpo"]["method.beta"]
    assert (beta.low, beta.high) == ((2.5, 5.5) if split == "forget10" else (1.5, 3.5))
    plan = plan_for(sweep)
    check(plan)
    assert plan.phases[0].work == "evaluate"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["run.data.original_model=not-a-hub-id", "run.data.retrain_model=org/model_retain90"],
            "run.data.original_model: 'not-a-hub-id' is neither a model folder nor a hub id org/name",
        ),
        (
            ["run.data.original_model=org/model_full"],
            "run.data: data.original_model is set but data.retrain_model is not; allowed: both",
        ),
        (
            ["run.data.original_model=org/model_full", "run.data.retrain_model=org/model_retain95"],
            "run.data.retrain_model: org/model_retain95 was fine-tuned on retain95, but forget_split "
            "forget10 pairs with retain90; allowed: the ..._retain90 model",
        ),
    ],
)
def test_bad_released_model_settings_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserInputError) as caught:
        load_sweep_config("tofu", overrides)
    # the error names the --set that brought the bad value
    assert any(str(caught.value).startswith(f"--set {item}: {message}") for item in overrides)
    assert "\n" not in str(caught.value)


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        UserInputError, match=r"run.data.original_model: .* has no weights; a released model folder"
    ):
        load_sweep_config(
            "tofu", [f"run.data.original_model={tmp_path}", "run.data.retrain_model=org/model_retain90"]
        )


def test_local_released_folders_are_used_as_they_are(tmp_path: Path) -> None:
    fine_tuned = RunSettings.model_validate({**run_settings(), "cache_dir": str(tmp_path / "cache")})
    ws = workspace(fine_tuned)
    saved = {}
    for name, seed in (("original", 1), ("retrain", 2)):  # two different models, in HF folders
        folder = tmp_path / f"released-{name}"
        initial_model(fine_tuned.model_copy(update={"seed": seed}), ws.data.corpus()).model.save_pretrained(
            folder
        )
        saved[name] = load_file(folder / "model.safetensors")
    settings = run_settings()
    settings["data"] |= {
        "original_model": str(tmp_path / "released-original"),
        "retrain_model": str(tmp_path / "released-retrain"),
    }
    config = RunSettings.model_validate({**settings, "cache_dir": str(tmp_path / "cache")})
    assert original_key(config) != original_key(fine_tuned)
    assert retrain_key(config) != retrain_key(fine_tuned)

    logs: list[str] = []
    prepared = prepare(workspace(config), logs.append)
    assert f"[prepare] Retrain: using {tmp_path / 'released-retrain'} as it is" in logs
    assert f"[prepare] Original: using {tmp_path / 'released-original'} as it is" in logs
    assert not any("fine-tuning" in line for line in logs)
    assert prepared.retrain is not None
    for name, model in (("original", prepared.original), ("retrain", prepared.retrain)):
        weights = load_file(model.path / "model.safetensors")
        assert weights.keys() == saved[name].keys()
        assert all(weights[k].equal(saved[name][k]) for k in weights)  # used as it is
    assert 0.0 <= prepared.original.metrics["forget_quality"] <= 1.0
    assert prepared.retrain.metrics["forget_quality"] == pytest.approx(1.0)

    again: list[str] = []
    prepare(workspace(config), again.append)
    assert again == [
        f"[prepare] Retrain: cached at {prepared_dirs(config)[1]}",
        f"[prepare] Original: cached at {prepared_dirs(config)[0]}",
    ]
