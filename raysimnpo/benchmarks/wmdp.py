"""The WMDP benchmark (Li et al. 2024; the SimNPO paper's Table A2 setting).

* Questions: `cais/wmdp` configs wmdp-bio / wmdp-cyber (wmdp-chem also loads), split `test`, fields
  question, choices, answer; utility: MMLU (`cais/mmlu`, config `all`, split `test`).
* Unlearning corpora: the forget corpora (`cais/wmdp-bio-forget-corpus`, gated: request access on the
  hub, or give a local copy; `cais/wmdp-corpora` config cyber-forget-corpus) and the retain corpora
  (`cais/wmdp-corpora` bio-retain-corpus / cyber-retain-corpus), all split `train`, field `text`,
  trained on as raw-text chunks (loss on every token after BOS).
* A local folder mirrors this as `<path>/<local config>/<split>.jsonl` (`LOCAL_LAYOUT`); the generated
  analog (`raysimnpo.data.wmdp_generator`) writes the same folder.
* Metric: zero-shot multiple-choice accuracy from per-choice summed log-likelihoods
  (`raysimnpo.metrics.wmdp`), with lm-evaluation-harness's prompt (`choice_format: letter`:
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
from pydantic import BaseModel, ConfigDict, Field

from ..data.benchmark_sources import BenchmarkSource, Rows, check_fields, read_hub_rows, read_local_rows
from ..data.sources import generated_folder
from ..data.wmdp_generator import GENERATOR_VERSION, WmdpGeneratorConfig, generate_wmdp_dataset
from ..errors import UserInputError
from ..metrics.wmdp import choice_accuracy, predicted_choices

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


class WmdpSettings(BaseModel):
    """The `wmdp:` section of a run."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # finite floats only

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


def check_method(method: str) -> None:
    if method in ("idk_nll", "idk_dpo"):
        raise UserInputError(
            f"method: {method} replaces QA answers by refusals and needs a QA benchmark; WMDP unlearns raw "
            "text; allowed: ga, grad_diff, npo, simnpo, w_grad_diff, rmu, task_vector"
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


def evaluate_wmdp(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: WmdpRunData,
    batch_size: int,
    max_length: int,
) -> WmdpEvaluation:
    """Accuracy on every question set, and `wmdp_forget` = 1 − mean accuracy over the WMDP subsets."""
    from ..scoring import score_sequences

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    metrics: dict[str, float] = {}
    examples: list[dict[str, Any]] = []
    for name, rows in data.questions.items():
        encoded = [choice_examples(tokenizer, r, data.settings.choice_format, max_length) for r in rows]
        flat = [e for per_row in encoded for e in per_row]
        nll, _ = score_sequences(model, flat, batch_size, int(pad_id))
        widths = {len(e) for e in encoded}
        loglik: list[np.ndarray] = []
        start = 0
        for per_row in encoded:
            loglik.append(-nll[start : start + len(per_row)])
            start += len(per_row)
        answers = [r["answer"] for r in rows]
        if len(widths) == 1:
            matrix = np.stack(loglik)
        else:  # rows with fewer choices: pad with -inf so argmax never picks a missing one
            matrix = np.full((len(rows), max(widths)), -np.inf)
            for i, values in enumerate(loglik):
                matrix[i, : len(values)] = values
        metrics[name] = choice_accuracy(matrix, answers)
        predicted = predicted_choices(matrix)
        examples += [
            {
                "split": name,
                "index": i,
                "question": r["question"],
                "answer": int(r["answer"]),
                "predicted": int(p),
                "choice_loglik": [float(v) for v in values],
            }
            for i, (r, p, values) in enumerate(zip(rows, predicted, loglik, strict=True))
        ]
    forget = [metrics[k] for k in metrics if k.startswith("wmdp_")]
    metrics["wmdp_forget"] = 1.0 - float(np.mean(forget))
    return WmdpEvaluation(metrics=metrics, examples=examples)
