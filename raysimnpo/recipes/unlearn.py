"""The single-run recipe: prepare Original and Retrain (cached), unlearn, evaluate.

`python -m raysimnpo.run` calls `run`; the Ray trial calls the same pieces (`prepare`,
`unlearn_model`, `evaluate`) and every TorchTrainer worker calls `unlearn_model` (and, to prepare
for trials on workers, `finetune_weights`), so a CPU run and a cluster run share one path.

Prepared models are cached under `<cache_dir>/prepared/<content hash>/` by what produced them (data
source, model, fine-tuning recipe, seed, and for Retrain the forget split), each as a Hugging Face
folder (safetensors) with its evaluation: `metrics.json` and `examples.parquet`.

Everything that differs between benchmarks is asked of the run's `Benchmark` (`ws.benchmark`, from
`raysimnpo.benchmarks.registry`): which rows train Original / Retrain and feed the forget and retain
terms (`training_examples`), how a model is evaluated (`evaluate`), what of Retrain's evaluation the
others are measured against (`retrain_reference`), released models and cache-key parts. The loop, the
caching and the unlearning are shared.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..benchmarks import base
from ..benchmarks.base import Benchmark, Evaluation, Role, TrainingKind
from ..benchmarks.registry import benchmark
from ..config.base import content_hash
from ..config.run import RunSettings
from ..data.formatting import EncodedExample, PromptFormat, QAEncoder, encode_qa
from ..errors import UserInputError, first_line
from ..maths.metrics import NOISE_CEILING
from ..methods import METHODS, MethodParams, apply_task_vector, needs_of
from ..models import LoadedModel, load_model_and_tokenizer, write_prompt_format
from ..results import EPOCH_MARK, write_parquet
from ..training import sharding
from ..training.loop import EpochEnd, ForgetBatchHook, TrainingSummary, UnlearnInputs, frozen_copy, train
from ..training.precision import loaded_dtype
from ..training.scoring import score_sequences

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Workspace:
    """Everything a run needs in memory: data, tokenizer and encoded training sets.

    Built once per sweep (`workspace`) and handed to the trials as it is (`for_run`): what it holds
    depends only on the parts of the config in `workspace_key`."""

    config: RunSettings
    data: Any
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    pad_id: int
    key: str = ""
    encoded: dict[tuple[str, int], list[EncodedExample]] = field(default_factory=dict)
    encoder: QAEncoder = None  # type: ignore[assignment]  # the evaluation encodings, kept by `for_run`

    def __post_init__(self) -> None:
        # A copy with another tokenizer or prompt format (dataclasses.replace) encodes anew.
        e = self.encoder
        if e is None or e.tokenizer is not self.tokenizer or e.prompt_format != self.prompt_format:
            self.encoder = QAEncoder(self.tokenizer, self.prompt_format)

    @property
    def benchmark(self) -> Benchmark:
        return benchmark(self.config.benchmark)

    def for_run(self, config: RunSettings) -> Workspace:
        """This workspace for another run of the same data and model (a trial's sampled method and
        training settings); a run whose `workspace_key` differs gets a workspace of its own."""
        if workspace_key(config) != self.key:
            return workspace(config)
        return dataclasses.replace(self, config=config)

    def encode(self, rows: list[dict[str, Any]], max_length: int | None = None) -> list[EncodedExample]:
        length = self.config.prepare.max_length if max_length is None else max_length
        return [
            encode_qa(self.tokenizer, r["question"], r["answer"], self.prompt_format, length) for r in rows
        ]


@dataclass
class PreparedModel:
    path: Path
    metrics: dict[str, float]
    examples: list[dict[str, Any]]

    def forget_truth_ratios(self) -> Any:
        import numpy as np

        return np.array([e["truth_ratio"] for e in self.examples if e["split"] == "forget"], dtype=np.float64)


@dataclass
class Prepared:
    original: PreparedModel
    retrain: PreparedModel | None  # None: the benchmark has no Retrain (WMDP's released Original)


@dataclass
class RunResult:
    original: PreparedModel
    retrain: PreparedModel | None
    unlearned: Evaluation
    training: TrainingSummary
    evaluation_seconds: float
    model: PreTrainedModel | None = None  # the unlearned model (python -m raysimnpo.run saves it)
    workspace: Workspace | None = None


def resolve_device(config: RunSettings) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("device: cuda was asked for but no GPU is visible; allowed: auto, cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def original_key(config: RunSettings) -> str:
    return content_hash("original", *benchmark(config.benchmark).cache_key_parts(config, "original"))


def retrain_key(config: RunSettings) -> str:
    return content_hash(
        original_key(config), "retrain", *benchmark(config.benchmark).cache_key_parts(config, "retrain")
    )


def workspace_key(config: RunSettings) -> str:
    """What a workspace depends on: the benchmark's data settings, the model (its tokenizer), the
    seed (the tiny tokenizer's), the cache and the encoding lengths; not the method or optimiser."""
    return content_hash(
        "workspace",
        config.model_dump(
            mode="json", include={"benchmark", "seed", "cache_dir", "data", "model", "muse", "wmdp"}
        ),
        str(config.prepare.max_length),
        str(config.unlearn.max_length),
    )


def load_run_data(config: RunSettings) -> Any:
    """The benchmark's rows; a method the benchmark cannot run is a UserInputError."""
    bench = benchmark(config.benchmark)
    bench.check_method(config.method.name)
    return bench.load(config)


def training_examples(
    ws: Workspace, kind: TrainingKind, max_length: int | None = None
) -> list[EncodedExample]:
    """What trains Original (`original`) and Retrain (`retrain`), and the forget / retain sets of
    unlearning (the benchmark's: TOFU's QA pairs, MUSE's and WMDP's raw-text chunks), encoded once
    per workspace."""
    length = ws.config.prepare.max_length if max_length is None else max_length
    if (kind, length) not in ws.encoded:
        ws.encoded[(kind, length)] = ws.benchmark.training_examples(ws, kind, length)
    return ws.encoded[(kind, length)]


def initial_model(config: RunSettings, corpus: Iterable[str]) -> LoadedModel:
    """The run's starting model and tokenizer (on CPU): a preset built from the run's seed (the
    `tiny` tokenizer trained on `corpus`, the run's texts), a local folder or a hub id."""
    return load_model_and_tokenizer(
        config.model.name,
        dtype=config.model.dtype,
        cache_dir=Path(config.cache_dir),
        tokenizer_corpus=corpus,
        seed=config.seed,
        trust_remote_code=config.model.trust_remote_code,
        tiny=config.model.tiny,
    )


def workspace(config: RunSettings) -> Workspace:
    """Load the data, train or load the tokenizer and encode what unlearning trains on; built once
    per sweep and handed to the trials (`Workspace.for_run`)."""
    bench = benchmark(config.benchmark)
    data = load_run_data(config)
    loaded = initial_model(config, bench.corpus(data))
    tok, prompt_format = loaded.tokenizer, loaded.prompt_format
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ws = Workspace(config, data, tok, prompt_format, int(pad_id), key=workspace_key(config))
    # Encode everything now: a prompt that leaves no target tokens is a user error, reported
    # before any model is trained or written. The unlearning sets are kept for the trials.
    bench.check_encoding(ws)
    for kind in ("forget", "retain"):
        training_examples(ws, kind, config.unlearn.max_length)
    reference_examples(ws)
    return ws


def load_prepared_model(path: Path, config: RunSettings) -> PreTrainedModel:
    loaded = load_model_and_tokenizer(
        str(path), dtype=config.model.dtype, cache_dir=Path(config.cache_dir), trust_remote_code=False
    )
    return loaded.model.to(resolve_device(config))


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, path: Path
) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_prompt_format(path, prompt_format)


def write_examples(examples: list[dict[str, Any]], path: Path) -> None:
    write_parquet(pa.Table.from_pylist(examples), path)


def evaluate(ws: Workspace, model: PreTrainedModel, retrain_reference: Any | None) -> Evaluation:
    """The benchmark's evaluation of `model`. `retrain_reference` (`retrain_reference`): what of
    Retrain's evaluation it is measured against; None when `model` is Retrain itself."""
    return base.evaluate(ws.benchmark, model, ws, retrain_reference)


def evaluation_key(config: RunSettings) -> str:
    """What a prepared model's stored evaluation depends on besides its weights."""
    return content_hash(
        "evaluation",
        config.evaluation,
        *benchmark(config.benchmark).cache_key_parts(config, "evaluation"),
        str(config.prepare.max_length),
    )


def retrain_reference(ws: Workspace, retrain: PreparedModel | None) -> Any | None:
    """What of Retrain's evaluation the other models are measured against (the benchmark's: TOFU's
    forget truth ratios for forget quality, MUSE's AUC for PrivLeak, nothing for WMDP)."""
    if retrain is None:
        return None
    return ws.benchmark.retrain_reference(Evaluation(retrain.metrics, retrain.examples))


def as_is_model(config: RunSettings, name: str) -> str | None:
    """The released model to use as the prepared `name` (Original / Retrain) instead of fine-tuning."""
    role: Role = "original" if name == "Original" else "retrain"
    return benchmark(config.benchmark).released_model(config, role)


def _finetune_and_store(
    ws: Workspace,
    name: str,
    final: Path,
    kind: TrainingKind,
    retrain_truth_ratios: Any | None,
    log: Log,
) -> PreparedModel:
    """Fine-tune (or reuse) one prepared model and evaluate it (or reuse the evaluation).

    `final/model` holds the weights, keyed by what trained them; `final/eval-<key>/` holds an
    evaluation, keyed by the evaluation settings and forget split, so a new evaluation setting
    re-evaluates the cached weights instead of reusing stale numbers or retraining. Both are
    written to a temporary folder and renamed into place."""
    config = ws.config
    eval_dir = final / f"eval-{evaluation_key(config)}"
    if (eval_dir / "metrics.json").is_file():
        log(f"[prepare] {name}: cached at {final}")
        metrics = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
        examples = pq.read_table(eval_dir / "examples.parquet").to_pylist()
        return PreparedModel(final / "model", metrics, examples)
    final.mkdir(parents=True, exist_ok=True)
    released = as_is_model(config, name)
    if (final / "model" / "config.json").is_file():
        log(f"[prepare] {name}: weights cached at {final}; evaluating")
        model = load_prepared_model(final / "model", config)
    elif released is not None:
        # A released model (MUSE's target/retrain, WMDP's Zephyr) is the prepared model as it is; it is
        # saved with the run's tokenizer, since some releases ship weights only.
        from transformers import AutoModelForCausalLM

        from ..models import resolve_dtype

        log(f"[prepare] {name}: using {released} as it is")
        try:
            model = AutoModelForCausalLM.from_pretrained(released, dtype=resolve_dtype(config.model.dtype))
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            raise UserInputError(
                f"{config.benchmark}: could not load the released {name} {released!r} ({first})"
            ) from exc
        model = model.to(resolve_device(config))
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=final))
        save_model(model, ws.tokenizer, ws.prompt_format, staging)
        staging.rename(final / "model")
    else:
        model, _ = finetune_weights(ws, name, final, kind, log)
    evaluation = evaluate(ws, model, retrain_truth_ratios)
    staging = Path(tempfile.mkdtemp(prefix=".eval-", dir=final))
    write_examples(evaluation.examples, staging / "examples.parquet")
    (staging / "metrics.json").write_text(json.dumps({"name": name, "metrics": evaluation.metrics}))
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    staging.rename(eval_dir)
    shown = " ".join(f"{k} {evaluation.metrics[k]:.3g}" for k in ws.benchmark.headline_metrics)
    log(f"[prepare] {name}: {shown}")
    return PreparedModel(final / "model", evaluation.metrics, evaluation.examples)


def finetune_weights(
    ws: Workspace, name: str, final: Path, kind: TrainingKind, log: Log = _quiet
) -> tuple[PreTrainedModel, TrainingSummary]:
    """Fine-tune one prepared model from the initial weights and write it to `final/model`.

    The one fine-tuning step of prepare: the in-process prepare calls it, and so does every rank of
    a TorchTrainer (`orchestration.trainer.finetune_with_torch_trainer`). Under several ranks the
    model is sharded with FSDP2 and `training.train` walks the same global batches on every rank, so
    the weights equal a single process's; rank 0 writes the folder (`sharding.save_hf_checkpoint`:
    written aside and renamed, in the dtype the model was loaded in), with `training.json` (the
    per-epoch rows, seconds, world size). Returns the model (sharded under several ranks) and its
    training summary."""
    config = ws.config
    rank, world_size = sharding.rank_and_world_size()
    examples = training_examples(ws, kind)
    check_finetune_batches(ws, kind, world_size)
    model = initial_model(config, ws.benchmark.corpus(ws.data)).model.to(resolve_device(config))
    dtype = loaded_dtype(model)
    unit = ws.benchmark.training_unit
    shown = log if rank == 0 else _quiet
    on = f" on {world_size} workers" if world_size > 1 else ""
    shown(f"[prepare] {name}: fine-tuning on {len(examples)} {unit} for {config.prepare.epochs} epochs{on}")

    def show(row: dict[str, Any]) -> None:
        shown(f"[prepare] {name} epoch {row['epoch']}/{config.prepare.epochs} loss {row['loss']:.4f}")

    if world_size > 1:
        sharding.shard_model(model)
    summary = train(
        model,
        config.prepare,
        pad_id=ws.pad_id,
        seed=config.seed,
        examples=examples,
        report=show,
        rank=rank,
        world_size=world_size,
    )
    record = {"epochs": summary.epochs, "seconds": summary.seconds, "workers": world_size}
    sharding.save_hf_checkpoint(
        model,
        ws.tokenizer,
        ws.prompt_format,
        final / "model",
        dtype=dtype,
        extra_files={"training.json": json.dumps(record)},
    )
    return model, summary


def check_finetune_batches(ws: Workspace, kind: TrainingKind, world_size: int) -> None:
    """Fine-tuning on `world_size` ranks: every rank must take a non-empty slice of every global batch
    (FSDP steps are collectives), so `prepare.batch_size` must be at least `world_size` and the
    `kind` examples' last batch must hold 0 or at least `world_size` (a smaller one would be left out,
    and the weights would differ from a single process's). One UserInputError line each."""
    if world_size <= 1:
        return
    batch = ws.config.prepare.batch_size
    if batch < world_size:
        raise UserInputError(
            f"prepare.batch_size: {batch} cannot be split over {world_size} workers; allowed: >= {world_size}"
        )
    n = len(training_examples(ws, kind))
    rest = n % batch
    if 0 < rest < world_size:
        raise UserInputError(
            f"prepare.batch_size: {batch} leaves the {kind} set's {n} examples a last batch of {rest} for "
            f"{world_size} workers; allowed: a batch size that leaves 0 or at least {world_size} examples"
        )


@dataclass(frozen=True)
class FineTune:
    """A model `prepare` fine-tunes: its name, its folder (`<root>/<role>-<content hash>`), what it
    trains on, and the seed of its initial weights and batch order."""

    name: str
    folder: Path
    kind: TrainingKind
    seed: int


def fine_tunes(config: RunSettings, root: Path | None = None) -> list[FineTune]:
    """The models `prepare` fine-tunes (whether or not their weights are made already), in its order:
    Retrain (when the benchmark has one), the Original, and with `evaluation.noise_ceiling` the
    second Retrain of `noise_ceiling`. Released models, used as they are, are not among them."""
    original_dir, retrain_dir = prepared_dirs(config, root)
    jobs = []
    retrain = benchmark(config.benchmark).has_retrain(config) and as_is_model(config, "Retrain") is None
    if retrain:
        jobs.append(FineTune("Retrain", retrain_dir, "retrain", config.seed))
    if as_is_model(config, "Original") is None:
        jobs.append(FineTune("Original", original_dir, "original", config.seed))
    if retrain and config.evaluation.noise_ceiling:
        second = second_retrain_config(config)
        jobs.append(FineTune(SECOND_RETRAIN, prepared_dirs(second, root)[1], "retrain", second.seed))
    return jobs


def prepare_one(ws: Workspace, name: str, root: Path | None = None, log: Log = _quiet) -> None:
    """Make one prepared model (`name`: Original or Retrain) on its own, so that the two can be made
    at the same time: Retrain is fine-tuned and evaluated (its evaluation needs no other model);
    the Original is only fine-tuned, since its evaluation (forget quality, PrivLeak) is measured
    against Retrain's (`prepare` evaluates it, reusing these weights). A model with weights already
    in place, or a released model used as it is, is left to `prepare`."""
    original_dir, retrain_dir = prepared_dirs(ws.config, root)
    final = retrain_dir if name == "Retrain" else original_dir
    if (final / "model" / "config.json").is_file() or as_is_model(ws.config, name) is not None:
        return
    if name == "Retrain" and not ws.benchmark.has_retrain(ws.config):
        return
    final.mkdir(parents=True, exist_ok=True)
    if name == "Retrain":
        _finetune_and_store(ws, name, final, "retrain", None, log)
    else:
        finetune_weights(ws, name, final, "original", log)


def prepared_dirs(config: RunSettings, root: Path | None = None) -> tuple[Path, Path]:
    """Where Original and Retrain live: `<root>/<content hash>` (root: `<cache_dir>/prepared`)."""
    root = Path(config.cache_dir) / "prepared" if root is None else root
    return root / f"original-{original_key(config)}", root / f"retrain-{retrain_key(config)}"


def prepare(ws: Workspace, log: Log = _quiet, root: Path | None = None) -> Prepared:
    """Fine-tune Retrain (on retainXX, or the retain texts) first, so the Original can be measured
    against it (TOFU's forget quality, MUSE's PrivLeak); both are cached by content hash. A benchmark
    may have no Retrain (WMDP with a released Original used as it is)."""
    original_dir, retrain_dir = prepared_dirs(ws.config, root)
    retrain = None
    if ws.benchmark.has_retrain(ws.config):
        retrain = _finetune_and_store(ws, "Retrain", retrain_dir, "retrain", None, log)
    original = _finetune_and_store(
        ws, "Original", original_dir, "original", retrain_reference(ws, retrain), log
    )
    if retrain is not None and ws.config.evaluation.noise_ceiling:
        retrain.metrics[NOISE_CEILING] = noise_ceiling(ws, retrain, root, log)
    return Prepared(original=original, retrain=retrain)


SECOND_RETRAIN = "Retrain (seed + 1)"


def second_retrain_config(config: RunSettings) -> RunSettings:
    """The run the noise ceiling's second Retrain is fine-tuned for: the same, from seed + 1."""
    return config.model_copy(update={"seed": config.seed + 1})


def noise_ceiling(ws: Workspace, retrain: PreparedModel, root: Path | None, log: Log) -> float:
    """Forget quality of a second Retrain, fine-tuned like the first from seed + 1 (its initial
    weights and batch order; the same data and tokenizer), measured against the first: the FQ a
    perfect unlearner would get, so a gap to it can be told from the KS test's noise. Cached like
    every prepared model."""
    other = second_retrain_config(ws.config)
    _, second_dir = prepared_dirs(other, root)
    second = _finetune_and_store(
        ws.for_run(other), SECOND_RETRAIN, second_dir, "retrain", retrain_reference(ws, retrain), log
    )
    value = float(second.metrics["forget_quality"])
    log(f"[prepare] noise ceiling: FQ of a second Retrain against Retrain {value:.3g}")
    return value


def reference_examples(ws: Workspace) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """The forget answers and the forget questions' refusals, in forget order: what the
    reference NLLs of NPO and IdkDPO are computed on."""
    length = ws.config.unlearn.max_length
    if ("reference", length) not in ws.encoded:
        forget, refusals = ws.benchmark.reference_examples(ws, length)
        ws.encoded[("reference", length)], ws.encoded[("refusal", length)] = forget, refusals
    return ws.encoded[("reference", length)], ws.encoded[("refusal", length)]


def unlearn_inputs(
    ws: Workspace,
    params: MethodParams,
    reference: PreTrainedModel | None,
    reference_nll: tuple[Any, Any] | None = None,
) -> UnlearnInputs:
    """Forget/retain examples plus what the method needs: refusals for IDK, and the reference NLLs
    ℓ_ref (eq. 2) of the forget answers and refusals, computed once by the Original (or passed in
    as `reference_nll`, precomputed for a whole sweep: one value per forget answer and per refusal)."""
    forget, refusals = reference_examples(ws)
    inputs = UnlearnInputs(
        forget=forget, retain=training_examples(ws, "retain", ws.config.unlearn.max_length)
    )
    needs = needs_of(params)
    if "idk" in needs:
        inputs.idk = refusals
    if "reference_nll" in needs:
        if reference_nll is None:
            assert reference is not None
            batch = ws.config.evaluation.batch_size
            reference_nll = (
                score_sequences(reference, forget, batch, ws.pad_id)[0],
                score_sequences(reference, refusals, batch, ws.pad_id)[0] if refusals else [],
            )
        elif len(reference_nll[0]) != len(forget) or (refusals and len(reference_nll[1]) != len(refusals)):
            # (a raw-text benchmark has no refusals: its stored refusal column is not read)
            sizes = [len(v) for v in reference_nll]
            raise UserInputError(
                f"reference_nll: {sizes[0]} and {sizes[1]} values but the forget set has {len(forget)} "
                f"examples and {len(refusals)} refusals; allowed: one ℓ_ref per forget answer and per "
                "refusal, in order"
            )
        inputs.forget_ref_nll = torch.tensor(reference_nll[0], dtype=torch.float32)
        inputs.idk_ref_nll = torch.tensor(reference_nll[1] if refusals else [], dtype=torch.float32)
    return inputs


def check_batches(inputs: UnlearnInputs, params: MethodParams, batch_size: int, world_size: int) -> None:
    """Every rank must take a non-empty slice of every global batch (FSDP steps are collectives):
    the last, partial batch of the forget set and of the retain stream must hold 0 or at least
    `world_size` examples."""
    sets = {"forget": len(inputs.forget)}
    if METHODS[params.name].retain_weight(params) > 0:
        sets["retain"] = len(inputs.retain)
    for which, n in sets.items():
        rest = n % batch_size
        if world_size > 1 and 0 < rest < world_size:
            raise UserInputError(
                f"unlearn.batch_size: the {which} set's {n} examples leave a last batch of {rest} for "
                f"{world_size} workers; allowed: a batch size that leaves 0 or at least {world_size} examples"
            )


def unlearn_model(
    ws: Workspace,
    original: Path | str | PreTrainedModel,
    method: MethodParams | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    *,
    reference_nll: tuple[Any, Any] | None = None,
    on_forget_batch: ForgetBatchHook | None = None,
    epoch_end: EpochEnd | None = None,
    resume_from: str | Path | None = None,
    after_epoch: Callable[[PreTrainedModel, int], dict[str, float]] | None = None,
    stop_after: Callable[[dict[str, float]], bool] | None = None,
) -> tuple[PreTrainedModel, TrainingSummary]:
    """The unlearning recipe: (workspace, Original weights, method, report) -> unlearned model.

    The single-run CLI, an in-process trial and every TorchTrainer worker call this one function.
    `original`: the Original's folder, or the model itself (unlearned in place). `method` defaults to
    the config's. In a torch.distributed group of several ranks (FSDP2 workers) each rank calls it:
    ℓ_ref and the method's frozen copy are taken from the whole Original, then both models are
    sharded and `training.train` walks the same global batches on every rank, so the result equals
    a single process's. The method's `after_training` step (Task Vector) runs at the end, shard by
    shard when sharded. `report` gets one row per epoch; `on_forget_batch`, `epoch_end`,
    `resume_from` and `stop_after` as in `training.train`. `after_epoch(model, epoch)` (e.g. an
    `EpochEvaluator`) sees the model the method would return after that epoch: for a method with an
    `after_training` step, that step is applied for the call and undone after it.
    """
    config = ws.config
    params = config.method if method is None else method
    rank, world_size = sharding.rank_and_world_size()
    loaded = isinstance(original, PreTrainedModel)
    model = original if loaded else load_prepared_model(Path(original), config)  # type: ignore[arg-type]
    inputs = unlearn_inputs(ws, params, model, reference_nll)
    check_batches(inputs, params, config.unlearn.batch_size, world_size)
    frozen = frozen_copy(model, params)
    if world_size > 1:
        sharding.shard_model(model)
        if frozen is not None:
            sharding.shard_model(frozen)
    after_training = METHODS[params.name].after_training
    original_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()} if after_training is not None else None
    )

    def output_after(epoch: int) -> dict[str, float]:
        assert after_epoch is not None
        if original_state is None:
            return after_epoch(model, epoch)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(apply_task_vector(original_state, trained, params))
        try:
            return after_epoch(model, epoch)
        finally:
            model.load_state_dict(trained)

    summary = train(
        model,
        config.unlearn,
        pad_id=ws.pad_id,
        seed=config.seed,
        unlearn=inputs,
        params=params,
        report=report,
        on_forget_batch=on_forget_batch,
        epoch_end=epoch_end,
        resume_from=resume_from,
        rank=rank,
        world_size=world_size,
        frozen=frozen,
        after_epoch=None if after_epoch is None else output_after,
        stop_after=stop_after,
    )
    if original_state is not None:
        model.load_state_dict(apply_task_vector(original_state, model.state_dict(), params))
    return model, summary


def epoch_checkpoint(checkpoint: str | Path, epoch: int) -> str:
    """A kept epoch's weights sit beside the run's final checkpoint: `<checkpoint>.epoch-<e>`, the
    folder the results' epoch candidate of that epoch points to (`results.epoch_candidates`)."""
    return f"{checkpoint}{EPOCH_MARK}{epoch}"


@dataclass
class EpochEvaluator:
    """Per-epoch evaluation (`evaluation.every_epoch`), an `after_epoch` of `unlearn_model`: after
    every epoch the model is evaluated as a finished run's would be (the benchmark's items, scores
    and metrics), so each (trial, epoch) is a point of the front. Under FSDP every rank calls it with
    its shards (the forward passes are collectives; the numbers are the same on every rank).

    Weights: with `keep` set, an epoch's weights are written to `<keep>.epoch-<e>` when its point is
    not dominated by another epoch of the run in the `objectives` (only those can still be selected:
    an epoch another epoch dominates is never the better choice under the front or Table 2's rule),
    and the folders of epochs it dominates are removed, so a 7B sweep keeps a few copies per trial,
    not one per epoch. `last` is the latest evaluation (the run's final one when it ends)."""

    ws: Workspace
    retrain_reference: Any
    objectives: list[tuple[str, str]]
    keep: Path | None = None
    last: Evaluation | None = None
    points: dict[int, list[float]] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def __call__(self, model: PreTrainedModel, epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        bench = self.ws.benchmark
        stats = bench.score_items(model, self.ws, bench.evaluation_items(self.ws))
        self.last = bench.aggregate(self.ws, stats, self.retrain_reference)
        if self.keep is not None:
            self._keep(model, epoch, [float(self.last.metrics[m]) for m, _ in self.objectives])
        self.seconds += time.perf_counter() - started
        # `evaluated_at` (unix seconds): when the point existed, e.g. to draw a front against time
        return {**{k: float(v) for k, v in self.last.metrics.items()}, "evaluated_at": time.time()}

    def _keep(self, model: PreTrainedModel, epoch: int, point: list[float]) -> None:
        import math

        from ..maths.pareto import non_dominated_mask

        assert self.keep is not None
        self.points[epoch] = point
        epochs = sorted(self.points)
        values = [self.points[e] for e in epochs]
        if any(not math.isfinite(v) for p in values for v in p):
            front = set(epochs)  # no order on a NaN: keep everything
        else:
            mask = non_dominated_mask(values, [d for _, d in self.objectives])  # type: ignore[misc]
            front = {e for e, keep in zip(epochs, mask, strict=True) if keep}
        if epoch in front:
            sharding.save_hf_checkpoint(
                model, self.ws.tokenizer, self.ws.prompt_format, epoch_checkpoint(self.keep, epoch)
            )
            self.kept.append(epoch)
        rank, _ = sharding.rank_and_world_size()
        for dropped in [e for e in self.kept if e not in front]:
            self.kept.remove(dropped)
            if rank == 0:
                shutil.rmtree(epoch_checkpoint(self.keep, dropped), ignore_errors=True)

    def final_checkpoint(self, checkpoint: Path, epoch: int) -> bool:
        """Move the kept folder of `epoch` (the run's last) to `checkpoint`, the run's final model,
        instead of writing the same weights again; False when that epoch was not kept."""
        if self.keep is None or epoch not in self.kept:
            return False
        self.kept.remove(epoch)
        rank, _ = sharding.rank_and_world_size()
        if rank == 0:
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            Path(epoch_checkpoint(self.keep, epoch)).rename(checkpoint)
        return True


def run(config: RunSettings, log: Log = _quiet) -> RunResult:
    ws = workspace(config)
    prepared = prepare(ws, log)
    forget = ws.benchmark.forget_description(ws.data)
    log(f"[unlearn] {config.method.name}: {config.unlearn.epochs} epochs over {forget}")

    reference = retrain_reference(ws, prepared.retrain)
    # `evaluation.every_epoch`: each epoch's metrics join its training row, and the last epoch's
    # evaluation is the run's
    evaluator = EpochEvaluator(ws, reference, []) if config.evaluation.every_epoch else None
    headline = ws.benchmark.headline_metrics

    def show(row: dict[str, Any]) -> None:
        scores = "".join(f" {m} {row[m]:.3g}" for m in headline if m in row)
        log(
            f"[unlearn] epoch {row['epoch']}/{config.unlearn.epochs} forget {row['forget_loss']:.4f} "
            f"retain {row['retain_loss']:.4f}{scores}"
        )

    model, summary = unlearn_model(ws, prepared.original.path, report=show, after_epoch=evaluator)
    if evaluator is not None and evaluator.last is not None:
        evaluation, seconds = evaluator.last, evaluator.seconds
    else:
        started = time.perf_counter()
        evaluation = evaluate(ws, model, reference)
        seconds = time.perf_counter() - started
    return RunResult(prepared.original, prepared.retrain, evaluation, summary, seconds, model, ws)
