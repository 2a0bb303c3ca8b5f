"""The resource plan of a sweep: memory per GPU (or per CPU process) of each phase, before Ray starts.

No weights are loaded and nothing runs on a device: the parameter count comes from the model's
config built on the meta device. The configs of the paper's models ship with the package
(`raysimnpo/model_configs/*.json`, `SHIPPED_CONFIGS`), so the plan works offline; a local model
folder's config.json is read, and any other hub id's config is taken from the Hugging Face cache
once the sweep's validation has downloaded the model (the plan itself never goes to the network).

Bytes per device of a training phase (fine-tuning Original/Retrain, unlearning, relearning) on a
world of `w` devices, for P trainable parameters:

    weights     4 P / w   float32 master weights (precision.py; FSDP2 shards them over the w ranks)
                + the compute copy: 2 P (bf16) without sharding (autocast keeps one copy per step),
                  or with FSDP2 the unsharded compute-dtype parameters of two decoder blocks
                  (the running one and the prefetched one) and of the root (embeddings, head)
                + a frozen float32 copy of the model for methods that need one (GradDiff-KL)
    gradients   4 P / w   float32
    optimizer   8 P / w   AdamW's two float32 moments
    activations (stated estimate) per token of a rank's batches, what autograd keeps for backward:
                (ACTIVATION_ELEMENTS_HIDDEN · hidden + ACTIVATION_ELEMENTS_MLP · intermediate)
                elements per decoder layer in the compute dtype, plus LOGIT_BYTES per logit
                (vocabulary entry) for the logits, their float32 copy, log-softmax and gradient;
                tokens = (forward passes per step) · ceil(batch / w) · max_length.

That is AdamW's 16 B/param (4 + 4 + 8) divided by the world size, as FSDP2 shards it. Inference
phases (reference log-probs, evaluation actors, a prepare stage that only evaluates released
models) hold the weights in the loaded dtype (bf16 on GPUs, float32 on CPU), the logits of one
scoring batch (LOGIT_BYTES per logit), one decoder block's activations of that batch (the same
elements per token as above; without autograd one block's are alive at a time) and the KV cache
of one generation batch.

A phase fits when its total is at most USABLE_FRACTION of a device's memory (GPU memory from
`resources.gpu_memory_gb`, else the visible GPUs, else 80 GB; a CPU process: this machine's RAM).
`check` refuses a sweep with a phase that does not fit, naming the numbers. A searched setting the
trial's or the evaluation's memory grows with (`PEAK_SETTINGS`) is planned at the largest value its
range can give, per method.

Trials per hour come from stated throughput assumptions (`THROUGHPUT`): training at 6 FLOPs per
parameter and token (forward and backward), scoring at 2, generation at GENERATION_EFFICIENCY of
that rate, plus a fixed per-trial start-up; a searched `unlearn.epochs` counts as its range's mean,
and with `evaluation.every_epoch` every epoch is evaluated.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserInputError

GB = 1e9
CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"

_OPEN_UNLEARNING_BASES = {
    "Llama-2-7b-chat-hf": "llama-2-7b.json",
    "Llama-3.2-1B-Instruct": "llama-3.2-1b.json",
    "Llama-3.2-3B-Instruct": "llama-3.2-3b.json",
}
SHIPPED_CONFIGS: dict[str, str] = {
    "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b.json",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b.json",
    "locuslab/tofu_ft_llama2-7b": "llama-2-7b.json",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b.json",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b.json",
    "HuggingFaceH4/zephyr-7b-beta": "zephyr-7b-beta.json",
    "muse-bench/MUSE-News_target": "muse-news-target.json",
    "muse-bench/MUSE-News_retrain": "muse-news-target.json",
    "muse-bench/MUSE-Books_target": "muse-books-target.json",
    "muse-bench/MUSE-Books_retrain": "muse-books-target.json",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m.json",
    "smollm2-135m": "smollm2-135m.json",
    # open-unlearning's TOFU fine-tunes: the Original (`_full`) and the Retrain models (`_retainXX`)
    **{
        f"open-unlearning/tofu_{base}_{split}": file
        for base, file in _OPEN_UNLEARNING_BASES.items()
        for split in ("full", "retain90", "retain95", "retain99")
    },
}
"""Hub id (or preset) -> the config JSON shipped in raysimnpo/model_configs/."""

MASTER_BYTES, GRADIENT_BYTES, ADAM_BYTES = 4, 4, 8
ACTIVATION_ELEMENTS_HIDDEN = 10
ACTIVATION_ELEMENTS_MLP = 4
LOGIT_BYTES = 12
USABLE_FRACTION = 0.9
"""Of a device's memory: the rest is the CUDA context, NCCL buffers and allocator fragmentation."""
DEFAULT_GPU_MEMORY_GB = 80.0
THROUGHPUT = {"gpu": 100e12, "cpu": 50e9}
"""Assumed sustained FLOP/s per GPU (bf16: a third of an A100's dense peak) and per CPU core (fp32:
perf/train_throughput.py measures 53 GFLOP/s training the tiny model on 2 cores, 116 for SmolLM2-135M)."""
GENERATION_EFFICIENCY = {"gpu": 0.1, "cpu": 0.4}
"""Greedy decoding's share of that rate: memory-bound on GPUs; on CPU perf/epoch_evaluation.py measures
the tiny model generating at 0.43 of its unlearning epoch's FLOP/s."""
TRIAL_STARTUP_SECONDS = {"gpu": 60.0, "cpu": 15.0}
"""Per trial: TorchTrainer workers, evaluation actors, imports (DESIGN §7's measured start-up)."""
TOFU_MEAN_TOKENS = 80
"""Assumed tokens per TOFU QA with a Llama tokenizer: ~20 question + ~45 answer + the chat template."""
SCORED_ANSWERS_PER_QUESTION = 6
"""TOFU scores each evaluation question's answer and about five perturbed or paraphrased ones."""


# ------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, counted on the meta device."""

    name: str
    source: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_width: int  # key/value heads x head dimension
    largest_block: int  # parameters of the largest decoder block
    outside_blocks: int  # embeddings, final norm and LM head (the FSDP2 root's own parameters)


def model_config(name: str, tiny: Any = None, trust_remote_code: bool = False) -> tuple[Any, str] | None:
    """(transformers config, where it came from) of the `tiny` preset, a local folder, a shipped id, or
    a hub id whose config is in the Hugging Face cache (the sweep's validation downloads it with the
    model); never a network call. None when there is no readable config: the validation of
    `model.name` then says what is wrong."""
    from transformers import AutoConfig, LlamaConfig

    if name == "tiny":
        from ..models import TinyModelConfig

        shape = tiny or TinyModelConfig()
        config = LlamaConfig(
            vocab_size=shape.vocab_size,
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            max_position_embeddings=shape.max_position_embeddings,
            tie_word_embeddings=shape.tie_word_embeddings,
        )
        return config, f"tiny preset (vocabulary at most {shape.vocab_size})"
    folder = Path(name).expanduser()
    if name in SHIPPED_CONFIGS and not folder.exists():
        data = json.loads((CONFIG_DIR / SHIPPED_CONFIGS[name]).read_text())
        return AutoConfig.for_model(**data), f"shipped config {SHIPPED_CONFIGS[name]}"
    source = f"{folder}/config.json" if folder.is_dir() else "hub config (Hugging Face cache)"
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None
    return config, source


def model_shape(name: str, tiny: Any = None, trust_remote_code: bool = False) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and count its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    from .sharding import decoder_blocks

    found = model_config(name, tiny, trust_remote_code)
    if found is None:
        raise UserInputError(
            f"model.name: no config for {name!r} to plan resources with; allowed: the tiny preset, a local "
            "folder with config.json, a hub id whose config is in the Hugging Face cache, or a model with a "
            f"shipped config: {', '.join(sorted(SHIPPED_CONFIGS))}"
        )
    config, source = found
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    blocks = decoder_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return ModelShape(
        name=name,
        source=source,
        parameters=total,
        layers=len(blocks),
        hidden=int(config.hidden_size),
        intermediate=int(getattr(config, "intermediate_size", None) or 4 * config.hidden_size),
        vocab=int(config.vocab_size),
        kv_width=kv_heads * head_dim,
        largest_block=max(sum(p.numel() for p in b.parameters()) for b in blocks),
        outside_blocks=sum(p.numel() for p in model.parameters() if id(p) not in in_blocks),
    )


def count(n: int) -> str:
    return f"{n / 1e9:.3g} B" if n >= 1e9 else f"{n / 1e6:.3g} M"


# ------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class PhaseMemory:
    """Bytes one device (GPU, or CPU process) of a phase holds at its peak."""

    phase: str
    work: str  # fine-tune / inference / not run
    devices: int  # the phase's world size: GPUs (or CPU processes) working on one model together
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def block_elements(shape: ModelShape) -> int:
    """Activation elements one decoder block holds per token (the stated estimate)."""
    return ACTIVATION_ELEMENTS_HIDDEN * shape.hidden + ACTIVATION_ELEMENTS_MLP * shape.intermediate


def training_memory(
    phase: str,
    shape: ModelShape,
    *,
    devices: int,
    batch_size: int,
    max_length: int,
    passes: int = 1,
    compute_bytes: int = 2,
    frozen_copy: bool = False,
) -> PhaseMemory:
    """One rank of a fine-tuning or unlearning run on `devices` ranks (FSDP2 when more than one).
    `passes`: forward passes held for one backward (unlearning: forget + retain, + refusals for IDK);
    `compute_bytes`: 2 for bf16 compute (GPUs), 4 for float32 (CPU)."""
    p, w = shape.parameters, devices
    mixed = compute_bytes < MASTER_BYTES
    if w == 1:
        compute_copy = p * compute_bytes if mixed else 0
    else:
        compute_copy = (2 * shape.largest_block + shape.outside_blocks) * compute_bytes
    weights = MASTER_BYTES * p / w + compute_copy + (MASTER_BYTES * p if frozen_copy else 0)
    tokens = passes * math.ceil(batch_size / w) * max_length
    per_token = shape.layers * block_elements(shape) * compute_bytes + LOGIT_BYTES * shape.vocab
    return PhaseMemory(
        phase=phase,
        work="fine-tune",
        devices=w,
        weights=weights,
        gradients=GRADIENT_BYTES * p / w,
        optimizer=ADAM_BYTES * p / w,
        activations=tokens * per_token,
    )


def inference_memory(
    phase: str,
    shape: ModelShape,
    *,
    batch_size: int,
    max_length: int,
    max_new_tokens: int = 0,
    weight_bytes: int = 2,
) -> PhaseMemory:
    """One process scoring (and generating for) batches of `batch_size` sequences of `max_length`
    tokens with an unsharded model in its loaded dtype."""
    logits = batch_size * max_length * shape.vocab * LOGIT_BYTES
    # without autograd one decoder block's intermediates are alive at a time
    block = batch_size * max_length * block_elements(shape) * weight_bytes
    kv_cache = (
        batch_size * (max_length + max_new_tokens) * shape.layers * 2 * shape.kv_width * weight_bytes
        if max_new_tokens
        else 0
    )
    return PhaseMemory(
        phase=phase,
        work="inference",
        devices=1,
        weights=shape.parameters * weight_bytes,
        gradients=0.0,
        optimizer=0.0,
        activations=logits + block + kv_cache,
    )


def not_run(phase: str, why: str) -> PhaseMemory:
    return PhaseMemory(phase, f"not run ({why})", 0, 0.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Hardware:
    """What one device holds and how many the cluster has."""

    gpu: bool
    memory_per_device: float  # bytes: one GPU's memory, or this machine's RAM for CPU processes
    memory_source: str
    cluster_devices: int  # GPUs, or CPUs
    cluster_source: str

    @property
    def usable(self) -> float:
        return USABLE_FRACTION * self.memory_per_device


def host_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def detect_hardware(sweep: Any, cpus: int | None = None) -> Hardware:
    """GPUs when the sweep's workers ask for them: memory from `resources.gpu_memory_gb`, else the
    smallest visible GPU, else DEFAULT_GPU_MEMORY_GB; the cluster's GPUs from
    `resources.cluster_gpus`, else the visible ones, else exactly one trial's. CPU sweeps: this
    machine's RAM per process and `cpus` (default: all of this machine's) CPUs."""
    r = sweep.resources
    if r.gpus_per_worker <= 0:
        count = cpus or os.cpu_count() or 1
        return Hardware(False, host_memory_bytes(), "this machine's RAM", count, "CPUs of this machine")
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if r.gpu_memory_gb is not None:
        memory, memory_source = r.gpu_memory_gb * GB, "resources.gpu_memory_gb"
    elif visible:
        memory = float(min(torch.cuda.get_device_properties(i).total_memory for i in range(visible)))
        memory_source = f"visible GPU {torch.cuda.get_device_name(0)}"
    else:
        memory, memory_source = DEFAULT_GPU_MEMORY_GB * GB, "default (no GPU visible here)"
    one_trial = math.ceil(r.workers * r.gpus_per_worker)
    if r.cluster_gpus is not None:
        count, count_source = r.cluster_gpus, "resources.cluster_gpus"
    elif visible:
        count, count_source = visible, "visible GPUs"
    else:
        count, count_source = one_trial, "one trial's (no GPU visible here; set resources.cluster_gpus)"
    return Hardware(True, memory, memory_source, count, count_source)


@dataclass(frozen=True)
class Workload:
    """Sizes that set a trial's duration: forget and retain examples, mean tokens per training
    example, evaluation questions."""

    forget_examples: int
    retain_examples: int
    mean_tokens: float
    eval_questions: int


@dataclass(frozen=True)
class ResourcePlan:
    model: ModelShape
    hardware: Hardware
    phases: tuple[PhaseMemory, ...]
    gpus_per_trial: float
    concurrent_trials: int
    trial_seconds: float | None
    assumptions: str
    searched_peak: str = ""  # the searched settings the trial and evaluation phases are planned at

    @property
    def trials_per_hour(self) -> float | None:
        if self.trial_seconds is None:
            return None
        return self.concurrent_trials * 3600.0 / self.trial_seconds

    def refused(self) -> list[PhaseMemory]:
        return [p for p in self.phases if p.devices and p.total > self.hardware.usable]

    def lines(self) -> list[str]:
        hw, m = self.hardware, self.model
        kind = "GPU" if hw.gpu else "CPU process"
        out = [
            f"model {m.name}: {count(m.parameters)} parameters ({m.source}, counted on the meta device)",
            f"per {kind}: {hw.memory_per_device / GB:.1f} GB ({hw.memory_source}), "
            f"{hw.usable / GB:.1f} GB usable ({USABLE_FRACTION:.0%}); cluster: {hw.cluster_devices} "
            f"{'GPUs' if hw.gpu else 'CPUs'} ({hw.cluster_source})",
            f"{'phase':<20}{'work':<12}{'devices':>8}{'weights':>10}{'grads':>9}{'optim':>9}"
            f"{'activ.':>9}{'total':>9}  GB per {kind}",
        ]
        for p in self.phases:
            if not p.devices:
                out.append(f"{p.phase:<20}{p.work}")
                continue
            verdict = "fits" if p.total <= hw.usable else "DOES NOT FIT"
            out.append(
                f"{p.phase:<20}{p.work:<12}{p.devices:>8}{p.weights / GB:>10.2f}{p.gradients / GB:>9.2f}"
                f"{p.optimizer / GB:>9.2f}{p.activations / GB:>9.2f}{p.total / GB:>9.2f}  {verdict}"
            )
        rate = self.trials_per_hour
        speed = (
            f", ~{rate:.3g} trials/hour"
            if rate is not None
            else ", trials/hour not estimated (no data sizes)"
        )
        per_trial = f"{self.gpus_per_trial:g} GPUs" if hw.gpu else "CPU"
        out.append(f"trials: {per_trial} per trial, {self.concurrent_trials} concurrent{speed}")
        out.append(f"assumed: {self.assumptions}")
        return out


# Run settings a trial's peak memory grows with: where one is searched, the plan takes the largest
# value its range can give, so a batch the search reaches late is not a surprise on the GPU.
PEAK_SETTINGS = (
    "unlearn.batch_size",
    "unlearn.max_length",
    "evaluation.batch_size",
    "evaluation.max_new_tokens",
)


@dataclass(frozen=True)
class PeakRun:
    """A searched method's trial at its peak: its run with every searched PEAK_SETTINGS at the
    largest value of its range, what it needs (`methods.needs_of`) and which settings were raised."""

    method: str
    run: Any
    needs: frozenset[str]
    raised: tuple[str, ...]


def peak_runs(sweep: Any) -> list[PeakRun]:
    from ..methods import needs_of

    out = []
    for method in sweep.search.methods:
        space = sweep.search.space.get(method, {})
        largest = {key: int(space[key].largest()) for key in PEAK_SETTINGS if key in space}
        run = sweep.trial_run_config({"method": method, method: largest})
        out.append(PeakRun(method, run, frozenset(needs_of(run.method)), tuple(largest)))
    return out


def expected_epochs(sweep: Any, method: str) -> float:
    """A `method` trial's planned unlearning epochs: the mean of a searched `unlearn.epochs` range
    (what the sampler draws before it learns), else the run's."""
    searched = sweep.search.space.get(method, {}).get("unlearn.epochs")
    return searched.mean() if searched is not None else float(sweep.run.unlearn.epochs)


def check_layers(run: Any, searched: Mapping[str, Any] | None = None, prefix: str = "run.") -> None:
    """RMU's layer against the decoder layers of the model the trials unlearn, read offline
    (`model_config`; not checked when the config is not at hand): `run.method`'s (named `prefix` +
    method.layer), and with `searched` (the sweep's `search.space`) every value a search range of
    `method.layer` can give."""
    from ..methods import layer_mistake

    candidates: list[tuple[str, int]] = []
    if run.method.name == "rmu" and run.method.layer is not None:
        candidates.append((f"{prefix}method.layer", run.method.layer))
    rmu_range = (searched or {}).get("rmu", {}).get("method.layer")
    if rmu_range is not None:
        values = rmu_range.choices if rmu_range.choices is not None else [rmu_range.high]
        candidates += [("search.space.rmu.method.layer", int(v)) for v in values if v is not None]
    if not candidates:
        return
    found = model_config(planned_model(run), run.model.tiny, run.model.trust_remote_code)
    if found is None:
        return
    n_layers = int(found[0].num_hidden_layers)
    for setting, layer in candidates:
        mistake = layer_mistake(layer, n_layers)
        if mistake is not None:
            raise UserInputError(f"{setting}: {mistake}")


def planned_model(run: Any) -> str:
    """The model the trials unlearn: a released Original when the run names one, else model.name."""
    from ..benchmarks.registry import benchmark

    return benchmark(run.benchmark).released_model(run, "original") or run.model.name


def phases(
    sweep: Any, shape: ModelShape, compute_bytes: int, peaks: list[PeakRun]
) -> tuple[PhaseMemory, ...]:
    """Prepare, reference log-probs, unlearning trial, evaluation actor and relearning actor, each
    with the batches and devices the sweep gives it (`compute_bytes`: 2 for bf16, 4 for float32;
    `peaks`: the searched methods' `peak_runs`)."""
    from ..benchmarks.registry import benchmark

    run, ev, world = sweep.run, sweep.run.evaluation, sweep.resources.workers
    needs = set().union(*(peak.needs for peak in peaks))
    evaluate = {
        "batch_size": ev.batch_size,
        "max_new_tokens": ev.max_new_tokens,
        "weight_bytes": compute_bytes,
    }
    bench = benchmark(run.benchmark)
    released = bench.released_model(run, "original") is not None and (
        not bench.has_retrain(run) or bench.released_model(run, "retrain") is not None
    )
    if released:  # Original and Retrain are only evaluated
        prepare = replace(
            inference_memory("prepare", shape, max_length=run.prepare.max_length, **evaluate), work="evaluate"
        )
    else:  # fine-tuned on the trial's workers (DESIGN §1)
        prepare = training_memory(
            "prepare",
            shape,
            devices=world,
            batch_size=run.prepare.batch_size,
            max_length=run.prepare.max_length,
            compute_bytes=compute_bytes,
        )
    reference = (
        inference_memory(
            "reference log-probs",
            shape,
            batch_size=ev.batch_size,
            max_length=run.unlearn.max_length,
            weight_bytes=compute_bytes,
        )
        if "reference_nll" in needs
        else not_run("reference log-probs", "no searched method needs them")
    )
    trial = max(
        (
            training_memory(
                "unlearning trial",
                shape,
                devices=world,
                batch_size=peak.run.unlearn.batch_size,
                max_length=peak.run.unlearn.max_length,
                passes=3 if "idk" in peak.needs else 2,
                compute_bytes=compute_bytes,
                frozen_copy="frozen_model" in peak.needs and world == 1,
            )
            for peak in peaks
        ),
        key=lambda p: p.total,
    )
    evaluation = max(
        (
            inference_memory(
                "evaluation actor",
                shape,
                max_length=run.prepare.max_length,
                batch_size=peak.run.evaluation.batch_size,
                max_new_tokens=peak.run.evaluation.max_new_tokens,
                weight_bytes=compute_bytes,
            )
            for peak in peaks
        ),
        key=lambda p: p.total,
    )
    relearning = (
        training_memory(
            "relearning actor",
            shape,
            devices=1,
            batch_size=sweep.relearn.batch_size,
            max_length=run.prepare.max_length,
            compute_bytes=compute_bytes,
        )
        if sweep.relearn is not None
        else not_run("relearning actor", "no relearn: section")
    )
    return prepare, reference, trial, evaluation, relearning


def trial_seconds(
    sweep: Any,
    shape: ModelShape,
    workload: Workload,
    flops_per_second: float,
    startup: float,
    generation: float,
) -> float:
    """Start-up + unlearning (6 FLOPs per parameter and token, forget and retain passes) + each
    evaluation: scoring the answers (2 FLOPs) and generating (2 FLOPs, at the `generation` share),
    once per trial or, with `evaluation.every_epoch`, after every epoch. Epochs are each method's
    `expected_epochs`; the searched methods count alike (the sampler picks each about as often)."""
    from ..methods import needs_of

    p = shape.parameters
    seconds = []
    for method in sweep.search.methods:
        run = sweep.trial_run_config({"method": method})
        passes = 3 if "idk" in needs_of(run.method) else 2
        epochs = expected_epochs(sweep, method)
        steps = math.ceil(workload.forget_examples / run.unlearn.batch_size)
        trained = epochs * steps * run.unlearn.batch_size * passes * workload.mean_tokens
        scored = workload.eval_questions * SCORED_ANSWERS_PER_QUESTION * workload.mean_tokens
        generated = workload.eval_questions * run.evaluation.max_new_tokens
        evaluations = epochs if run.evaluation.every_epoch else 1.0
        evaluate = 2 * p * scored / flops_per_second + 2 * p * generated / (flops_per_second * generation)
        seconds.append(startup + 6 * p * trained / flops_per_second + evaluations * evaluate)
    return sum(seconds) / len(seconds)


def plan_sweep(
    sweep: Any, hardware: Hardware, workload: Workload | None = None, shape: ModelShape | None = None
) -> ResourcePlan:
    """Memory per device of every phase of `sweep`, its concurrency and trials per hour."""
    run, r = sweep.run, sweep.resources
    shape = shape or model_shape(planned_model(run), run.model.tiny, run.model.trust_remote_code)
    loaded_bf16 = run.model.dtype == "bfloat16" or (run.model.dtype == "auto" and hardware.gpu)
    if hardware.gpu:
        per_trial = r.workers * r.gpus_per_worker
        concurrent = int(hardware.cluster_devices // per_trial)
        rate, unit = THROUGHPUT["gpu"] * per_trial, f"{THROUGHPUT['gpu'] / 1e12:g} TFLOP/s per GPU"
    else:
        per_trial = 0.0
        concurrent = max(1, int(hardware.cluster_devices // (r.workers * r.cpus_per_worker)))
        rate = THROUGHPUT["cpu"] * r.workers * r.cpus_per_worker
        unit = f"{THROUGHPUT['cpu'] / 1e9:g} GFLOP/s per CPU core"
    if sweep.search.max_concurrent_trials is not None:
        concurrent = min(concurrent, sweep.search.max_concurrent_trials)
    device = "gpu" if hardware.gpu else "cpu"
    startup, generation = TRIAL_STARTUP_SECONDS[device], GENERATION_EFFICIENCY[device]
    methods = sweep.search.methods
    epochs = ", ".join(
        f"{m} {expected_epochs(sweep, m):.3g}" if len(methods) > 1 else f"{expected_epochs(sweep, m):.3g}"
        for m in methods
    )
    if any("unlearn.epochs" in sweep.search.space.get(m, {}) for m in methods):
        epochs += " (a searched range's mean)"
    per_epoch = ", each evaluated" if run.evaluation.every_epoch else ""
    peaks = peak_runs(sweep)
    searched_peak = ", ".join(
        f"{peak.method}'s {key} {_setting(peak.run, key)}" for peak in peaks for key in peak.raised
    )
    assumptions = (
        f"{unit}, generation at {generation:.0%} of it, {startup:g} s start-up per trial, "
        f"unlearning epochs per trial {epochs}{per_epoch}; activations at "
        f"max_length (prepare {run.prepare.max_length}, unlearn {run.unlearn.max_length} tokens)"
        + (f"; memory at the largest searched {searched_peak}" if searched_peak else "")
    )
    return ResourcePlan(
        model=shape,
        hardware=hardware,
        phases=phases(sweep, shape, 2 if loaded_bf16 else 4, peaks),
        gpus_per_trial=per_trial,
        concurrent_trials=concurrent,
        trial_seconds=None
        if workload is None
        else trial_seconds(sweep, shape, workload, rate, startup, generation),
        assumptions=assumptions,
        searched_peak=searched_peak,
    )


ADVICE = {
    "prepare": "more workers (FSDP2 shards weights, gradients and AdamW state over them), a smaller "
    "prepare.batch_size or prepare.max_length, or released models used as they are (TOFU: "
    "data.original_model / data.retrain_model; MUSE: muse.target_model / muse.retrain_model)",
    "unlearning trial": "more workers (FSDP2 shards weights, gradients and AdamW state over them), a "
    "smaller unlearn.batch_size or unlearn.max_length (or a search range of them that stops lower)",
    "reference log-probs": "a smaller evaluation.batch_size or unlearn.max_length, or GPUs with more memory",
    "evaluation actor": "a smaller evaluation.batch_size, max_new_tokens or prepare.max_length (or a "
    "search range of them that stops lower), or GPUs with more memory",
    "relearning actor": "a smaller relearn.batch_size or prepare.max_length, or GPUs with more memory "
    "(a relearning actor trains on one GPU)",
}


def _setting(run: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(run, section), key)


def check(plan: ResourcePlan) -> None:
    """Refuse a plan with a phase that does not fit one device, or trials larger than the cluster."""
    hw = plan.hardware
    kind = "GPU" if hw.gpu else "CPU process"
    for p in plan.refused():
        searched = (
            f" at the largest searched {plan.searched_peak}"
            if plan.searched_peak and p.phase in ("unlearning trial", "evaluation actor")
            else ""
        )
        raise UserInputError(
            f"resources: {p.phase}{searched} needs {p.total / GB:.1f} GB per {kind} ({p.devices} per model; weights "
            f"{p.weights / GB:.1f} + gradients {p.gradients / GB:.1f} + optimizer {p.optimizer / GB:.1f} + "
            f"activations {p.activations / GB:.1f}) but one holds {hw.usable / GB:.1f} GB usable of "
            f"{hw.memory_per_device / GB:.1f} GB ({hw.memory_source}); allowed: {ADVICE[p.phase]}"
        )
    if hw.gpu and plan.concurrent_trials < 1:
        raise UserInputError(
            f"resources: a trial asks for {plan.gpus_per_trial:g} GPUs but the cluster has "
            f"{hw.cluster_devices} ({hw.cluster_source}); allowed: workers x gpus_per_worker <= "
            f"{hw.cluster_devices}"
        )


def published_workload(run: Any) -> Workload | None:
    """The run's sizes without loading its data, from its benchmark (`Benchmark.planned_workload`:
    TOFU's generator or published sizes); None when the benchmark cannot tell them offline."""
    from ..benchmarks.registry import benchmark

    return benchmark(run.benchmark).planned_workload(run)


def plan_for(sweep: Any, cpus: int | None = None) -> ResourcePlan | None:
    """`sweep`'s plan on the hardware `detect_hardware` finds (what the sweep command prints); None
    when the model's config is not at hand without the network (see `model_config`)."""
    run = sweep.run
    name = planned_model(run)
    if model_config(name, run.model.tiny, run.model.trust_remote_code) is None:
        return None
    return plan_sweep(sweep, detect_hardware(sweep, cpus), published_workload(run))


def check_sweep(
    sweep: Any, validate: Callable[[Any], None], cpus: int | None, log: Callable[[str], None]
) -> None:
    """Print `sweep`'s plan and refuse it (UserInputError) when a phase cannot fit, around `validate`
    (loading data and tokenizer): before it when the model's config is at hand offline (shipped,
    local, tiny), so nothing is loaded for a sweep that cannot run; else after it, once validation
    has downloaded the model and its config."""
    plan = plan_for(sweep, cpus)
    if plan is not None:
        show_and_check(plan, log)
    validate(sweep)
    if plan is None:
        plan = plan_for(sweep, cpus)
        if plan is None:
            log(f"[plan] no config for {planned_model(sweep.run)} to plan with; not checked")
            return
        show_and_check(plan, log)


def show_and_check(plan: ResourcePlan, log: Callable[[str], None]) -> None:
    for line in plan.lines():
        log(f"[plan] {line}")
    check(plan)


def main(argv: list[str] | None = None) -> int:
    """`python -m raysimnpo.training.resource_plan SWEEP [--set k=v] [--cpus N]`: print a sweep's plan; exit 2
    when a phase does not fit (what `python -m raysimnpo.sweep` checks before starting Ray)."""
    import argparse
    import sys

    from ..config.sweep import load_sweep_config

    parser = argparse.ArgumentParser(
        prog="python -m raysimnpo.training.resource_plan", description=main.__doc__
    )
    parser.add_argument("sweep", help="a sweep name or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cpus", type=int, help="CPUs for a CPU sweep (default: this machine's)")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep_config(args.sweep, args.overrides)
        name = planned_model(sweep.run)
        show_and_check(
            plan_sweep(
                sweep,
                detect_hardware(sweep, args.cpus),
                published_workload(sweep.run),
                model_shape(name, sweep.run.model.tiny, sweep.run.model.trust_remote_code),
            ),
            print,
        )
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
