"""The WMDP benchmark (Li et al. 2024; the SimNPO paper's Table A2 setting).

* Questions: `cais/wmdp` configs wmdp-bio / wmdp-cyber (wmdp-chem also loads), split `test`, fields
  question, choices, answer; utility: MMLU (`cais/mmlu`, config `all`, split `test`).
* Unlearning corpora: the forget corpora (`cais/wmdp-bio-forget-corpus`, gated: request access on the
  hub, or give a local copy; `cais/wmdp-corpora` config cyber-forget-corpus) and the retain corpora
  (`cais/wmdp-corpora` bio-retain-corpus / cyber-retain-corpus), all split `train`, field `text`,
  trained on as raw-text chunks (loss on every token after BOS).
* A local folder mirrors this as `<path>/<local config>/<split>.jsonl` (`LOCAL_LAYOUT`); the generated
  analog (`raysimnpo.data.generators.wmdp`) writes the same folder.
* Metric: zero-shot multiple-choice accuracy from per-choice summed log-likelihoods
  (`raysimnpo.maths.metrics.wmdp`), with lm-evaluation-harness's prompt (`choice_format: letter`:
  "question\\nA. c0\\nB. c1\\nC. c2\\nD. c3\\nAnswer:" then " A".." D") or the choice text after the
  question (`choice_format: text`, the cloze form the generated analog is written for).
* Default sweep objectives: 1 − mean accuracy on bio/cyber (`wmdp_forget`, max) and MMLU (max).
* Original: fine-tuned here on all corpora, or a released model used as it is
  (`original_as_is: true` with `model.name`, e.g. HuggingFaceH4/zephyr-7b-beta as in the paper).
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..config.base import Frozen
from ..data.benchmark_sources import BenchmarkSource, Rows, check_fields, read_hub_rows, read_local_rows
from ..data.generators.wmdp import GENERATOR_VERSION, WmdpGeneratorConfig, generate_wmdp_dataset
from ..data.sources import generated_folder
from ..errors import UserInputError
from ..maths.metrics.wmdp import choice_accuracy, predicted_choices
from .base import RawTextBenchmark

if TYPE_CHECKING:  # torch and transformers load with the first model, not with the config
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..data.formatting import EncodedExample

NAME = "wmdp"
DEFAULT_OBJECTIVES: tuple[tuple[str, Literal["max", "min"]], ...] = (("wmdp_forget", "max"), ("mmlu", "max"))
HEADLINE_METRICS = ("wmdp_bio", "wmdp_cyber", "mmlu")
Subset = Literal["bio", "cyber", "chem"]

HUB_LAYOUT: dict[str, tuple[str, str | None, str]] = {
    "wmdp-bio": ("cais/wmdp", "wmdp-bio", "test"),
    "wmdp-cyber": ("cais/wmdp", "wmdp-cyber", "test"),
    "wmdp-chem": ("cais/wmdp", "wmdp-chem", "test"),
    "mmlu": ("cais/mmlu", "all", "test"),
    "bio-forget-corpus": ("cais/wmdp-bio-forget-corpus", None, "train"),
    "cyber-forget-corpus": ("cais/wmdp-corpora", "cyber-forget-corpus", "train"),
    "bio-retain-corpus": ("cais/wmdp-corpora", "bio-retain-corpus", "train"),
    "cyber-retain-corpus": ("cais/wmdp-corpora", "cyber-retain-corpus", "train"),
}
"""local config -> (hub id, hub config, split)."""
LOCAL_LAYOUT: dict[str, str] = {name: split for name, (_, _, split) in HUB_LAYOUT.items()}
_QUESTION_FIELDS: dict[str, type | tuple[type, ...]] = {"question": str, "choices": list, "answer": int}


class WmdpSource(BenchmarkSource):
    """`hub` (the ids of `HUB_LAYOUT`), `local` (`path`) or `generated` (`generator`)."""

    generator: WmdpGeneratorConfig = WmdpGeneratorConfig()


class WmdpSettings(Frozen):
    """The `wmdp:` section of a run."""

    source: WmdpSource = WmdpSource()
    subsets: list[Subset] = Field(default_factory=lambda: list[Subset](["bio", "cyber"]), min_length=1)
    choice_format: Literal["letter", "text"] = "letter"
    chunk_length: int = Field(128, ge=8, description="tokens per raw-text training chunk")
    corpus_limit: int | None = Field(None, gt=0, description="documents per corpus (None: all)")
    question_limit: int | None = Field(None, gt=0, description="questions per set, MMLU included (None: all)")
    original_as_is: bool = Field(
        False, description="evaluate model.name as the Original instead of fine-tuning it on the corpora"
    )


@dataclass(frozen=True)
class WmdpRunData:
    settings: WmdpSettings
    questions: dict[str, Rows]  # wmdp_bio / wmdp_cyber / mmlu -> rows
    forget_texts: list[str]
    retain_texts: list[str]
    source_name: str = ""

    def training_texts(self, kind: str) -> list[str]:
        """original: forget + retain corpora; retrain: retain corpora; forget; retain."""
        return {
            "original": self.forget_texts + self.retain_texts,
            "retrain": self.retain_texts,
            "forget": self.forget_texts,
            "retain": self.retain_texts,
        }[kind]

    def training_examples(
        self, kind: str, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> list[EncodedExample]:
        from ..data.text_encoding import encode_corpus

        return encode_corpus(
            tokenizer, self.training_texts(kind), min(self.settings.chunk_length, max_length)
        )

    def corpus(self) -> list[str]:
        texts = self.forget_texts + self.retain_texts
        for rows in self.questions.values():
            for row in rows:
                texts.append(row["question"])
                texts.extend(row["choices"])
        return list(dict.fromkeys(texts))

    @property
    def forget_count(self) -> int:
        return len(self.forget_texts)


def _reader(settings: WmdpSettings, cache_dir: str | os.PathLike[str] | None) -> tuple[Any, str]:
    source = settings.source
    if source.kind == "hub":
        return (
            lambda name: read_hub_rows(*HUB_LAYOUT[name])
        ), "hub datasets cais/wmdp, cais/wmdp-corpora, cais/mmlu"
    if source.kind == "local":
        assert source.path is not None
        folder = Path(source.path).expanduser()
    else:
        folder = generated_folder(
            "wmdp",
            source.generator,
            GENERATOR_VERSION,
            lambda out: generate_wmdp_dataset(out, source.generator),
            cache_dir,
        )
    return (lambda name: read_local_rows(folder, name, LOCAL_LAYOUT[name])), f"folder {folder}"


def check_questions(rows: Rows, where: str) -> None:
    check_fields(rows, _QUESTION_FIELDS, where)
    for i, row in enumerate(rows):
        choices = row["choices"]
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserInputError(
                f"{where}: row {i + 1}: field 'choices' must be at least 2 non-empty strings"
            )
        if not 0 <= row["answer"] < len(choices):
            raise UserInputError(
                f"{where}: row {i + 1}: field 'answer' is {row['answer']}; allowed: 0..{len(choices) - 1}"
            )


def load_wmdp_run_data(
    settings: WmdpSettings, cache_dir: str | os.PathLike[str] | None = None
) -> WmdpRunData:
    """Read the question sets and corpora of `settings.subsets` from `settings.source`."""
    read, name = _reader(settings, cache_dir)

    def questions(config: str) -> Rows:
        rows, where = read(config)
        check_questions(rows, where)
        return rows if settings.question_limit is None else rows[: settings.question_limit]

    def texts(config: str) -> list[str]:
        rows, where = read(config)
        check_fields(rows, {"text": str}, where)
        rows = rows if settings.corpus_limit is None else rows[: settings.corpus_limit]
        return [r["text"] for r in rows]

    sets = {f"wmdp_{s}": questions(f"wmdp-{s}") for s in settings.subsets}
    sets["mmlu"] = questions("mmlu")
    corpora = [s for s in settings.subsets if s != "chem"]  # WMDP has no chem corpora
    return WmdpRunData(
        settings=settings,
        questions=sets,
        forget_texts=[t for s in corpora for t in texts(f"{s}-forget-corpus")],
        retain_texts=[t for s in corpora for t in texts(f"{s}-retain-corpus")],
        source_name=name,
    )


def choice_examples(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], choice_format: str, max_length: int
) -> list[EncodedExample]:
    """One scored continuation per choice: the letter after lm-evaluation-harness's WMDP/MMLU prompt,
    or the choice text after the question."""
    from ..data.text_encoding import encode_continuation

    question, choices = row["question"].strip(), row["choices"]
    if choice_format == "letter":
        letters = string.ascii_uppercase[: len(choices)]
        listed = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, choices, strict=True))
        context = f"{question}{listed}\nAnswer:"
        return [encode_continuation(tokenizer, context, f" {letter}", max_length) for letter in letters]
    return [encode_continuation(tokenizer, question, f" {choice}", max_length) for choice in choices]


@dataclass
class WmdpEvaluation:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)


def evaluation_items(data: WmdpRunData) -> list[dict[str, Any]]:
    """One item per question of every set (wmdp_bio, wmdp_cyber, ..., mmlu)."""
    return [
        {
            "split": name,
            "index": i,
            "question": r["question"],
            "choices": list(r["choices"]),
            "answer": int(r["answer"]),
        }
        for name, rows in data.questions.items()
        for i, r in enumerate(rows)
    ]


def score_items(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: WmdpSettings,
    items: list[dict[str, Any]],
    batch_size: int,
    max_length: int,
) -> list[dict[str, Any]]:
    """Per-question summed log-likelihood of each choice and the predicted choice, one scoring pass
    per set (in the order met)."""
    from ..training.scoring import score_sequences

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    by_split: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_split.setdefault(item["split"], []).append(item)
    examples: list[dict[str, Any]] = []
    for name, rows in by_split.items():
        encoded = [choice_examples(tokenizer, r, settings.choice_format, max_length) for r in rows]
        flat = [e for per_row in encoded for e in per_row]
        nll, _ = score_sequences(model, flat, batch_size, int(pad_id))
        start = 0
        for r, per_row in zip(rows, encoded, strict=True):
            values = -nll[start : start + len(per_row)]
            start += len(per_row)
            examples.append(
                {
                    "split": name,
                    "index": r["index"],
                    "question": r["question"],
                    "answer_index": int(r["answer"]),
                    "predicted": int(predicted_choices(values[None, :])[0]),
                    "choice_loglik": [float(v) for v in values],
                }
            )
    return examples


def aggregate(data: WmdpRunData, examples: list[dict[str, Any]]) -> WmdpEvaluation:
    """Accuracy on every question set, and `wmdp_forget` = 1 − mean accuracy over the WMDP subsets."""
    metrics: dict[str, float] = {}
    ordered: list[dict[str, Any]] = []
    for name in data.questions:
        rows = sorted((e for e in examples if e["split"] == name), key=lambda e: e["index"])
        width = max(len(e["choice_loglik"]) for e in rows)
        # Rows with fewer choices are padded with -inf so argmax never picks a missing one.
        matrix = np.full((len(rows), width), -np.inf)
        for i, e in enumerate(rows):
            matrix[i, : len(e["choice_loglik"])] = e["choice_loglik"]
        metrics[name] = choice_accuracy(matrix, [e["answer_index"] for e in rows])
        ordered += rows
    forget = [metrics[k] for k in metrics if k.startswith("wmdp_")]
    metrics["wmdp_forget"] = 1.0 - float(np.mean(forget))
    return WmdpEvaluation(metrics=metrics, examples=ordered)


def evaluate_wmdp(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: WmdpRunData,
    batch_size: int,
    max_length: int,
) -> WmdpEvaluation:
    """Accuracy on every question set, and `wmdp_forget` = 1 − mean accuracy over the WMDP subsets."""
    items = evaluation_items(data)
    return aggregate(data, score_items(model, tokenizer, data.settings, items, batch_size, max_length))


# --------------------------------------------------------------------------------------------
# The Benchmark protocol (`raysimnpo.benchmarks.base`)
# --------------------------------------------------------------------------------------------

EVALUATION_ONLY: tuple[str, ...] = ("choice_format", "question_limit")
"""Settings of the `wmdp:` section that change the evaluation but not what Original trains on."""


class WmdpBenchmark(RawTextBenchmark):
    """WMDP behind the `Benchmark` protocol: raw-text corpora, multiple-choice accuracy, no reference."""

    name = NAME
    headline_metrics = HEADLINE_METRICS
    metrics: tuple[str, ...] = ("wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu", "wmdp_forget")
    default_objectives: tuple[str, ...] = tuple(m for m, _ in DEFAULT_OBJECTIVES)
    relearning = False
    own_sweep = False

    def load(self, config: Any) -> WmdpRunData:
        return load_wmdp_run_data(config.wmdp, Path(config.cache_dir))

    def evaluation_items(self, ws: Any) -> list[dict[str, Any]]:
        return evaluation_items(ws.data)

    def score_items(self, model: PreTrainedModel, ws: Any, items: Any) -> list[dict[str, Any]]:
        return score_items(
            model,
            ws.tokenizer,
            ws.data.settings,
            list(items),
            ws.config.evaluation.batch_size,
            ws.config.prepare.max_length,
        )

    def aggregate(self, ws: Any, examples: list[dict[str, Any]], reference: Any) -> WmdpEvaluation:
        return aggregate(ws.data, examples)

    def retrain_reference(self, retrain: Any) -> None:
        """Accuracy needs no reference model."""
        return None

    def planned_workload(self, run: Any) -> None:
        """The resource plan's sizes are not known without loading this benchmark's data."""
        return None

    def has_retrain(self, config: Any) -> bool:
        """No Retrain when a released Original is used as it is (there is no retain-only twin of it)."""
        return not config.wmdp.original_as_is

    def released_model(self, config: Any, role: str) -> str | None:
        """`original_as_is`: `model.name` (e.g. Zephyr-7B-beta) is the Original, not fine-tuned here."""
        return str(config.model.name) if config.wmdp.original_as_is and role == "original" else None

    def cache_key_parts(self, config: Any, part: str) -> tuple[Any, ...]:
        settings = config.wmdp.model_dump(mode="json")
        if part == "original":
            training = {k: v for k, v in settings.items() if k not in EVALUATION_ONLY}
            return (NAME, training, config.model, config.prepare, str(config.seed))
        if part == "retrain":
            return ()
        # "examples-2": evaluations stored before the examples' `answer_index` column are redone.
        return (settings, "examples-2")
