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


def test_a_searched_batch_size_is_planned_at_the_largest_value_its_range_gives() -> None:
    """A trial sampled late with the range's largest batch must fit too: the plan takes it, per method."""
    base = plan_for(load_sweep_config("tofu-llama2-7b", ["resources.gpu_memory_gb=80"]))
    searched = "search.space.simnpo.unlearn.batch_size={choices: [32, 64]}"
    wider = plan_for(load_sweep_config("tofu-llama2-7b", ["resources.gpu_memory_gb=80", searched]))
    before, after = base.phases[2], wider.phases[2]
    # activations: passes · ceil(batch / 8 workers) · 500 tokens, so twice the batch is twice them
    assert after.activations == pytest.approx(2 * before.activations, rel=1e-12)
    assert (after.weights, after.optimizer) == (before.weights, before.optimizer)
    assert "memory at the largest searched simnpo's unlearn.batch_size 64" in wider.lines()[-1]

    huge = "search.space.simnpo.unlearn.batch_size={low: 32, high: 1024, integer: true}"
    with pytest.raises(
        UserInputError,
        match=r"^resources: unlearning trial at the largest searched simnpo's unlearn\.batch_size 1024 needs "
        r"760\.2 GB per GPU .*or a search range of them that stops lower\)$",
    ):
        check(plan_for(load_sweep_config("tofu-llama2-7b", ["resources.gpu_memory_gb=80", huge])))


def test_trial_time_counts_the_searched_epochs_and_an_evaluation_after_each() -> None:
    """Unlearning time grows with the mean of a searched `unlearn.epochs` range; with
    `evaluation.every_epoch` each of those epochs is evaluated, not only the last."""
    workload = resource_plan.Workload(
        forget_examples=100, retain_examples=900, mean_tokens=80, eval_questions=300
    )
    roomy = Hardware(False, 24 * GB, "test", 2, "test")
    last_only = ["run.evaluation.every_epoch=false", "search.early_stop=null"]

    def seconds(epochs: str | None = None, overrides: tuple[str, ...] = tuple(last_only)) -> float:
        ranges = [f"search.space.{m}.unlearn.epochs={epochs}" for m in ("simnpo", "npo")] if epochs else []
        plan = plan_sweep(load_sweep_config("tofu", [*overrides, *ranges]), roomy, workload)
        assert plan.trial_seconds is not None
        return plan.trial_seconds

    p = model_shape("tiny", load_sweep_config("tofu").run.model.tiny).parameters
    rate = resource_plan.THROUGHPUT["cpu"]  # one CPU per trial
    # one epoch: 13 batches of 8 (100 forget examples), forget and retain passes, 80 tokens, 6 FLOPs
    epoch = 6 * p * 13 * 8 * 2 * 80 / rate
    one, two = "{low: 1, high: 1, integer: true}", "{low: 2, high: 2, integer: true}"
    assert seconds(two) - seconds(one) == pytest.approx(epoch, rel=1e-9)
    # the default ranges, 7-12, count as their mean: 9.5 epochs
    assert seconds() - seconds("{choices: [9]}") == pytest.approx(0.5 * epoch, rel=1e-9)
    # one evaluation: 300 questions x 6 answers x 80 tokens scored, 300 x 64 tokens generated
    generation = resource_plan.GENERATION_EFFICIENCY["cpu"]
    evaluation = 2 * p * 300 * 6 * 80 / rate + 2 * p * 300 * 64 / (rate * generation)
    assert seconds(overrides=()) - seconds() == pytest.approx((9.5 - 1) * evaluation, rel=1e-9)
