"""raysimnpo.training.resource_plan: parameters counted on the meta device from the shipped configs, bytes per
GPU of each phase (AdamW with fp32 master weights: 16 B/param, sharded by FSDP2), and the refusal of
a sweep whose phase cannot fit, before Ray starts (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysimnpo.cli import sweep
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.errors import UserInputError
from raysimnpo.training import resource_plan
from raysimnpo.training.resource_plan import GB, Hardware, check, model_shape, plan_for, plan_sweep

# Published parameter counts of the paper's models.
LLAMA2_7B, LLAMA32_1B, SMOLLM2_135M = 6_738_415_616, 1_235_814_400, 134_515_008


@pytest.mark.parametrize(
    ("name", "parameters", "layers", "vocab"),
    [
        ("meta-llama/Llama-2-7b-chat-hf", LLAMA2_7B, 32, 32000),
        ("open-unlearning/tofu_Llama-2-7b-chat-hf_retain90", LLAMA2_7B, 32, 32000),
        ("muse-bench/MUSE-News_target", LLAMA2_7B, 32, 32000),
        ("meta-llama/Llama-3.2-1B-Instruct", LLAMA32_1B, 16, 128256),
        ("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 28, 128256),
        ("HuggingFaceH4/zephyr-7b-beta", 7_241_732_096, 32, 32000),
        ("smollm2-135m", SMOLLM2_135M, 30, 49152),
    ],
)
def test_parameters_come_from_the_shipped_config_on_the_meta_device(
    name: str, parameters: int, layers: int, vocab: int
) -> None:
    shape = model_shape(name)
    assert (shape.parameters, shape.layers, shape.vocab) == (parameters, layers, vocab)
    assert shape.source.startswith("shipped config")
    # Tied embeddings (Llama-3.2, SmolLM2) are counted once.
    assert shape.parameters == shape.layers * shape.largest_block + shape.outside_blocks


def test_llama2_7b_prepare_is_refused_on_one_80gb_gpu_and_fits_on_eight() -> None:
    one = plan_for(load_sweep_config("tofu-llama2-7b", ["resources.workers=1", "resources.gpu_memory_gb=80"]))
    prepare = one.phases[0]
    assert (prepare.phase, prepare.work, prepare.devices) == ("prepare", "fine-tune", 1)
    # fp32 master weights + fp32 gradients + AdamW's two fp32 moments: 16 B per parameter.
    assert prepare.weights - 2 * LLAMA2_7B == 4 * LLAMA2_7B  # plus the bf16 compute copy
    assert (prepare.gradients, prepare.optimizer) == (4 * LLAMA2_7B, 8 * LLAMA2_7B)
    with pytest.raises(UserInputError, match=r"^resources: prepare needs 214\.5 GB per GPU \(1 per model; "):
        check(one)

    eight = plan_for(load_sweep_config("tofu-llama2-7b", ["resources.gpu_memory_gb=80"]))
    check(eight)
    prepare, trial = eight.phases[0], eight.phases[2]
    assert (prepare.devices, trial.devices) == (8, 8)
    assert prepare.gradients + prepare.optimizer == pytest.approx(12 * LLAMA2_7B / 8)
    assert trial.total / GB == pytest.approx(38.1, abs=0.05)
    assert (eight.gpus_per_trial, eight.concurrent_trials) == (8, 1)
    assert eight.trials_per_hour is not None and eight.trials_per_hour > 0


def test_llama32_1b_released_models_sweep_plans_two_concurrent_trials() -> None:
    plan = plan_for(load_sweep_config("tofu-llama3.2-1b-released-forget10"))
    check(plan)
    prepare, reference, trial, evaluation, relearning = plan.phases
    assert plan.model.parameters == LLAMA32_1B
    assert prepare.work == "evaluate" and prepare.gradients == 0  # released models: nothing fine-tuned
    assert reference.work == "inference"  # NPO is searched: it needs the Original's log-probs
    assert trial.devices == 4 and trial.optimizer == pytest.approx(8 * LLAMA32_1B / 4)
    assert relearning.work.startswith("not run")
    assert (plan.gpus_per_trial, plan.concurrent_trials) == (4, 2)
    lines = plan.lines()
    assert lines[0].startswith("model open-unlearning/tofu_Llama-3.2-1B-Instruct_full: 1.24 B parameters")
    assert "2 concurrent" in lines[-2]


def test_smollm2_on_cpu_fits_in_ram_and_is_refused_in_one_gb() -> None:
    config = load_sweep_config("tofu", ["run.model.name=smollm2-135m"])
    roomy = Hardware(False, 24 * GB, "test", 2, "test")
    plan = plan_sweep(config, roomy, resource_plan.published_workload(config.run))
    check(plan)
    trial = plan.phases[2]
    # float32 compute on CPU: no bf16 copy, 16 B/param unsharded.
    assert trial.weights + trial.gradients + trial.optimizer == 16 * SMOLLM2_135M
    with pytest.raises(UserInputError, match=r"per CPU process .* 0\.9 GB usable of 1\.0 GB"):
        check(plan_sweep(config, Hardware(False, 1 * GB, "test", 2, "test")))


def test_a_trial_larger_than_the_cluster_is_refused() -> None:
    config = load_sweep_config("tofu-llama2-7b", ["resources.cluster_gpus=4"])
    with pytest.raises(UserInputError, match=r"a trial asks for 8 GPUs but the cluster has 4"):
        check(plan_for(config))


def test_sweep_refuses_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = sweep.main(["tofu-llama2-7b", "--set", "resources.workers=1", "--storage", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "[plan] prepare             fine-tune          1" in out and "DOES NOT FIT" in out
    assert err.startswith("error: resources: prepare needs 214.5 GB per GPU")
    assert not (tmp_path / "runs" / "tofu-llama2-7b").exists()
