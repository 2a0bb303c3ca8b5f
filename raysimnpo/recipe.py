"""The single-run recipe: prepare Original and Retrain (cached), unlearn, evaluate.

`python -m raysimnpo.run` calls `run`; the Ray trial calls the same pieces (`prepare`,
`unlearn_model`, `evaluate`) so a CPU run and a cluster run share one path.

Prepared models are cached under `<cache_dir>/prepared/<content hash>/` by what produced them (data
source, model, fine-tuning recipe, seed, and for Retrain the forget split), each as a Hugging Face
folder (safetensors) with its evaluation: `metrics.json` and `examples.parquet`.

The benchmark (`config.benchmark`: tofu, muse, wmdp) decides only three things here: which rows train
Original / Retrain and feed the forget and retain terms (`training_examples`: TOFU's QA pairs, or
MUSE/WMDP raw-text chunks), how a model is evaluated (`evaluate`), and what of Retrain's evaluation
the others are measured against (`retrain_reference`: TOFU's forget truth ratios for forget quality,
MUSE's AUC for PrivLeak, nothing for WMDP). The loop, the caching and the unlearning are shared.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .benchmarks import muse, tofu, wmdp
from .benchmarks.tofu import TofuRunData, load_tofu_run_data
from .config import RunConfig, content_hash
from .data.formatting import EncodedExample, PromptFormat, encode_qa
from .data.refusals import refusal_for
from .errors import UserInputError, first_line
from .evaluation import TofuEvaluation, evaluate_tofu
from .methods import MethodParams, apply_task_vector, needs_of
from .models import LoadedModel, load_model_and_tokenizer, write_prompt_format
from .scoring import score_sequences
from .training import ForgetBatchHook, TrainingSummary, UnlearnInputs, train

Log = Callable[[str], None]
RunData = TofuRunData | muse.MuseRunData | wmdp.WmdpRunData
TrainingKind = str
"""original | retrain | forget | retain"""
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "tofu": ("forget_quality", "model_utility"),
    "muse": muse.HEADLINE_METRICS,
    "wmdp": wmdp.HEADLINE_METRICS,
}


def _quiet(_: str) -> None:
    pass


@dataclass
class Workspace:
    """Everything a run needs in memory: data, tokenizer and encoded training sets."""

    config: RunConfig
    data: RunData
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    pad_id: int

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
    retrain: PreparedModel | None  # None: WMDP with a released Original used as it is


@dataclass
class RunResult:
    original: PreparedModel
    retrain: PreparedModel | None
    unlearned: TofuEvaluation | muse.MuseEvaluation | wmdp.WmdpEvaluation
    training: TrainingSummary
    evaluation_seconds: float


def resolve_device(config: RunConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("device: cuda was asked for but no GPU is visible; allowed: auto, cpu")
        return torch.device("cuda")
    return torch.device("cpu")


_EVALUATION_ONLY = {
    "muse": (
        "verbmem_max_new_tokens",
        "knowmem_max_new_tokens",
        "knowmem_icl_shots",
        "min_k",
        "auc_retrain",
        "retrain_model",
    ),
    "wmdp": ("choice_format", "question_limit"),
}


def benchmark_settings(config: RunConfig, training_only: bool = False) -> dict[str, Any]:
    """The `muse:` / `wmdp:` section of a non-TOFU run (without the evaluation-only fields when
    `training_only`), for cache keys."""
    settings = getattr(config, config.benchmark).model_dump(mode="json")
    if training_only:
        settings = {k: v for k, v in settings.items() if k not in _EVALUATION_ONLY[config.benchmark]}
    return settings


def original_key(config: RunConfig) -> str:
    if released := tofu.released_model(config, "Original"):  # the release and the tokenizer saved with it
        return content_hash("original", "released", released, config.model)
    if config.benchmark != "tofu":
        return content_hash(
            "original",
            config.benchmark,
            benchmark_settings(config, True),
            config.model,
            config.prepare,
            str(config.seed),
        )
    return content_hash(
        "original",
        config.data.source,
        config.model,
        config.prepare,
        str(config.data.train_on_utility_splits),
        str(config.seed),
    )


def retrain_key(config: RunConfig) -> str:
    if released := tofu.released_model(config, "Retrain"):
        return content_hash("retrain", "released", released, config.model)
    if config.benchmark == "muse":
        return content_hash(original_key(config), "retrain", str(config.muse.retrain_model))
    if config.benchmark == "wmdp":
        return content_hash(original_key(config), "retrain")
    return content_hash(original_key(config), "retrain", config.data.forget_split)


def load_run_data(config: RunConfig) -> RunData:
    """The benchmark's rows; a method the benchmark cannot run is a UserInputError."""
    cache = Path(config.cache_dir)
    if config.benchmark == "muse":
        muse.check_method(config.method.name)
        return muse.load_muse_run_data(config.muse, cache)
    if config.benchmark == "wmdp":
        wmdp.check_method(config.method.name)
        return wmdp.load_wmdp_run_data(config.wmdp, cache)
    return load_tofu_run_data(config.data.source, config.data.forget_split, cache)


def training_examples(
    ws: Workspace, kind: TrainingKind, max_length: int | None = None
) -> list[EncodedExample]:
    """What trains Original (`original`) and Retrain (`retrain`), and the forget / retain sets of
    unlearning: TOFU's QA pairs, or the raw-text chunks of MUSE and WMDP."""
    length = ws.config.prepare.max_length if max_length is None else max_length
    data = ws.data
    if not isinstance(data, TofuRunData):
        return data.training_examples(kind, ws.tokenizer, length)
    utility = data.utility_train_rows if ws.config.data.train_on_utility_splits else []
    rows = {
        "original": data.full + utility,
        "retrain": data.retain + utility,
        "forget": data.forget,
        "retain": data.retain,
    }[kind]
    return ws.encode(rows, length)


def initial_model(config: RunConfig, corpus: Iterable[str]) -> LoadedModel:
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


def workspace(config: RunConfig) -> Workspace:
    data = load_run_data(config)
    loaded = initial_model(config, data.corpus())
    tok, prompt_format = loaded.tokenizer, loaded.prompt_format
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ws = Workspace(config, data, tok, prompt_format, int(pad_id))
    # Encode everything now: a prompt that leaves no target tokens is a user error, reported
    # before any model is trained or written.
    if isinstance(data, TofuRunData):
        ws.encode(data.full + data.utility_train_rows)
        ws.encode(data.full, config.unlearn.max_length)
    elif not training_examples(ws, "forget", config.unlearn.max_length):
        raise UserInputError(f"{config.benchmark}: the forget corpus of {data.source_name} has no tokens")
    return ws


def load_prepared_model(path: Path, config: RunConfig) -> PreTrainedModel:
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
    pq.write_table(pa.Table.from_pylist(examples), path)


def evaluate(
    ws: Workspace, model: PreTrainedModel, retrain_reference: Any | None
) -> TofuEvaluation | muse.MuseEvaluation | wmdp.WmdpEvaluation:
    """The benchmark's evaluation of `model`. `retrain_reference` (`retrain_reference`): TOFU's
    Retrain forget truth ratios, MUSE's Retrain AUC; None when `model` is Retrain itself."""
    settings = ws.config.evaluation
    if isinstance(ws.data, muse.MuseRunData):
        return muse.evaluate_muse(
            model,
            ws.tokenizer,
            ws.data,
            settings.batch_size,
            settings.generation_limit,
            ws.config.prepare.max_length,
            retrain_reference,
        )
    if isinstance(ws.data, wmdp.WmdpRunData):
        return wmdp.evaluate_wmdp(
            model, ws.tokenizer, ws.data, settings.batch_size, ws.config.prepare.max_length
        )
    retrain_truth_ratios = retrain_reference
    return evaluate_tofu(
        model,
        ws.tokenizer,
        ws.prompt_format,
        ws.data.eval_splits,
        ws.config.evaluation,
        ws.config.prepare.max_length,
        retrain_truth_ratios,
    )


def evaluation_key(config: RunConfig) -> str:
    """What a prepared model's stored evaluation depends on besides its weights."""
    if config.benchmark != "tofu":
        return content_hash(
            "evaluation", config.evaluation, benchmark_settings(config), str(config.prepare.max_length)
        )
    return content_hash(
        "evaluation", config.evaluation, config.data.forget_split, str(config.prepare.max_length)
    )


def retrain_reference(ws: Workspace, retrain: PreparedModel | None) -> Any | None:
    """What of Retrain's evaluation the other models are measured against: TOFU's forget truth
    ratios (forget quality), MUSE's forget/holdout AUC (PrivLeak), nothing for WMDP."""
    if retrain is None or ws.config.benchmark == "wmdp":
        return None
    if ws.config.benchmark == "muse":
        return float(retrain.metrics["privleak_auc"])
    return retrain.forget_truth_ratios()


def as_is_model(config: RunConfig, name: str) -> str | None:
    """The released model to use as the prepared `name` (Original / Retrain) instead of fine-tuning."""
    if config.benchmark == "muse":
        return config.muse.target_model if name == "Original" else config.muse.retrain_model
    if config.benchmark == "wmdp" and config.wmdp.original_as_is and name == "Original":
        return config.model.name
    return tofu.released_model(config, name)


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

        from .models import resolve_dtype

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
        model = initial_model(config, ws.data.corpus()).model.to(resolve_device(config))
        examples = training_examples(ws, kind)
        unit = "QA" if isinstance(ws.data, TofuRunData) else "text chunks"
        log(f"[prepare] {name}: fine-tuning on {len(examples)} {unit} for {config.prepare.epochs} epochs")

        def show(row: dict[str, Any]) -> None:
            log(f"[prepare] {name} epoch {row['epoch']}/{config.prepare.epochs} loss {row['loss']:.4f}")

        summary = train(
            model, config.prepare, pad_id=ws.pad_id, seed=config.seed, examples=examples, report=show
        )
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=final))
        save_model(model, ws.tokenizer, ws.prompt_format, staging)
        (staging / "training.json").write_text(
            json.dumps({"epochs": summary.epochs, "seconds": summary.seconds})
        )
        staging.rename(final / "model")
    evaluation = evaluate(ws, model, retrain_truth_ratios)
    staging = Path(tempfile.mkdtemp(prefix=".eval-", dir=final))
    write_examples(evaluation.examples, staging / "examples.parquet")
    (staging / "metrics.json").write_text(json.dumps({"name": name, "metrics": evaluation.metrics}))
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    staging.rename(eval_dir)
    shown = " ".join(f"{k} {evaluation.metrics[k]:.3g}" for k in HEADLINE_METRICS[config.benchmark])
    log(f"[prepare] {name}: {shown}")
    return PreparedModel(final / "model", evaluation.metrics, evaluation.examples)


def prepared_dirs(config: RunConfig, root: Path | None = None) -> tuple[Path, Path]:
    """Where Original and Retrain live: `<root>/<content hash>` (root: `<cache_dir>/prepared`)."""
    root = Path(config.cache_dir) / "prepared" if root is None else root
    return root / f"original-{original_key(config)}", root / f"retrain-{retrain_key(config)}"


def prepare(ws: Workspace, log: Log = _quiet, root: Path | None = None) -> Prepared:
    """Fine-tune Retrain (on retainXX, or the retain texts) first, so the Original can be measured
    against it (TOFU's forget quality, MUSE's PrivLeak); both are cached by content hash. WMDP with
    a released Original used as it is has no Retrain."""
    original_dir, retrain_dir = prepared_dirs(ws.config, root)
    config = ws.config
    retrain = None
    if not (config.benchmark == "wmdp" and config.wmdp.original_as_is):
        retrain = _finetune_and_store(ws, "Retrain", retrain_dir, "retrain", None, log)
    original = _finetune_and_store(
        ws, "Original", original_dir, "original", retrain_reference(ws, retrain), log
    )
    return Prepared(original=original, retrain=retrain)


def reference_examples(ws: Workspace) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """The forget answers and the forget questions' refusals, in forget order: what the
    reference NLLs of NPO and IdkDPO are computed on."""
    length = ws.config.unlearn.max_length
    if not isinstance(ws.data, TofuRunData):  # raw text: no questions to refuse (IDK methods are refused)
        return training_examples(ws, "forget", length), []
    refusals = [dict(r, answer=refusal_for(i, ws.config.seed)) for i, r in enumerate(ws.data.forget)]
    return ws.encode(ws.data.forget, length), ws.encode(refusals, length)


def unlearn_inputs(
    ws: Workspace,
    params: MethodParams,
    reference: PreTrainedModel | None,
    reference_nll: tuple[Any, Any] | None = None,
) -> UnlearnInputs:
    """Forget/retain examples plus what the method needs: refusals for IDK, and the reference NLLs
    ℓ_ref (eq. 2) of the forget answers and refusals, computed once by the Original (or passed in
    as `reference_nll`, precomputed for a whole sweep)."""
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
        inputs.forget_ref_nll = torch.tensor(reference_nll[0], dtype=torch.float32)
        inputs.idk_ref_nll = torch.tensor(reference_nll[1], dtype=torch.float32)
    return inputs


def unlearn_model(
    ws: Workspace,
    original_path: Path,
    report: Callable[[dict[str, Any]], None] | None = None,
    reference_nll: tuple[Any, Any] | None = None,
    on_forget_batch: ForgetBatchHook | None = None,
) -> tuple[PreTrainedModel, TrainingSummary]:
    """Load the Original and unlearn it in this process with the config's method
    (`on_forget_batch`: see `training.train`)."""
    config = ws.config
    model = load_prepared_model(original_path, config)
    inputs = unlearn_inputs(ws, config.method, model, reference_nll)
    original_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()}
        if config.method.name == "task_vector"
        else None
    )
    summary = train(
        model,
        config.unlearn,
        pad_id=ws.pad_id,
        seed=config.seed,
        unlearn=inputs,
        params=config.method,
        report=report,
        on_forget_batch=on_forget_batch,
    )
    if original_state is not None:
        model.load_state_dict(apply_task_vector(original_state, model.state_dict(), config.method))
    return model, summary


def run(config: RunConfig, log: Log = _quiet) -> RunResult:
    ws = workspace(config)
    prepared = prepare(ws, log)
    forget = (
        f"{len(ws.data.forget)} forget QA"
        if isinstance(ws.data, TofuRunData)
        else f"{ws.data.forget_count} forget texts"
    )
    log(f"[unlearn] {config.method.name}: {config.unlearn.epochs} epochs over {forget}")

    def show(row: dict[str, Any]) -> None:
        log(
            f"[unlearn] epoch {row['epoch']}/{config.unlearn.epochs} forget {row['forget_loss']:.4f} "
            f"retain {row['retain_loss']:.4f}"
        )

    model, summary = unlearn_model(ws, prepared.original.path, report=show)
    started = time.perf_counter()
    evaluation = evaluate(ws, model, retrain_reference(ws, prepared.retrain))
    return RunResult(prepared.original, prepared.retrain, evaluation, summary, time.perf_counter() - started)
