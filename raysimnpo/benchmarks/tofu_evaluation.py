"""TOFU evaluation: per-example statistics from the scorers, then the benchmark's metrics.

All answers a split needs (the answer, the paraphrased answer, the perturbed answers) are scored
in one length-sorted pass, and the questions are answered greedily in batches; per-example values
are kept so that every aggregate can be recomputed from the examples table (DESIGN §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config.base import EvalSettings
from ..data.formatting import EncodedExample, PromptFormat, QAEncoder
from ..maths.metrics import text, tofu
from ..training.scoring import generate_greedy, score_sequences
from .tofu import EvalSplit, EvalSplitSpec


@dataclass
class TofuEvaluation:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def truth_ratios(self, split: str = "forget") -> np.ndarray:
        return np.array([e["truth_ratio"] for e in self.examples if e["split"] == split], dtype=np.float64)


@dataclass
class ScoredAnswers:
    """Every answer to score, flattened, with where each one belongs."""

    encoded: list[EncodedExample] = field(default_factory=list)
    owner: list[tuple[str, int, str, int]] = field(default_factory=list)  # split, row, kind, j

    def add(self, example: EncodedExample, split: str, row: int, kind: str, j: int = 0) -> None:
        self.encoded.append(example)
        self.owner.append((split, row, kind, j))


def scored_answers(
    encoder: QAEncoder, split: EvalSplitSpec, rows: Sequence[dict[str, Any]], max_length: int
) -> ScoredAnswers:
    """The answers TOFU scores for each row: the answer, the truth-ratio reference (when it is
    another field) and each perturbed answer."""
    seqs = ScoredAnswers()
    for r, row in enumerate(rows):
        q = row["question"]
        seqs.add(encoder.qa(q, row["answer"], max_length), split.name, r, "answer")
        if split.reference_field != "answer":
            seqs.add(encoder.qa(q, row[split.reference_field], max_length), split.name, r, "reference")
        for j, wrong in enumerate(row["perturbed_answer"]):
            seqs.add(encoder.qa(q, wrong, max_length), split.name, r, "perturbed", j)
    return seqs


def example_statistics(
    model: PreTrainedModel,
    encoder: QAEncoder,
    split: EvalSplitSpec,
    rows: Sequence[dict[str, Any]],
    settings: EvalSettings,
    max_length: int,
    indices: Sequence[int] | None = None,
    generate: bool = True,
) -> list[dict[str, Any]]:
    """Per-example statistics of one evaluation split, or of some of its rows (`indices`: their
    positions in the split; the generation limit counts positions; `generate=False`: scores only,
    no greedy answers, for metrics that need no ROUGE):
    summed NLLs and token counts of the answer, the truth-ratio reference and each perturbed
    answer, and the greedy answer. Everything TOFU's metrics need, nothing aggregated."""
    tokenizer = encoder.tokenizer
    seqs = scored_answers(encoder, split, rows, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll, n_tokens = score_sequences(model, seqs.encoded, settings.batch_size, pad_id)
    scored = {owner: (float(nll[i]), int(n_tokens[i])) for i, owner in enumerate(seqs.owner)}

    positions = list(range(len(rows))) if indices is None else list(indices)
    limit = settings.generation_limit
    generate_rows = [r for r in range(len(rows)) if generate and (limit is None or positions[r] < limit)]
    prompts = [encoder.prompt(rows[r]["question"]) for r in generate_rows]
    texts = generate_greedy(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
    generations = dict(zip(generate_rows, texts, strict=True))

    ref_kind = "answer" if split.reference_field == "answer" else "reference"
    out = []
    for r, row in enumerate(rows):
        perturbed = [scored[(split.name, r, "perturbed", j)] for j in range(len(row["perturbed_answer"]))]
        generation = generations.get(r)
        out.append(
            {
                "split": split.name,
                "index": positions[r],
                "question": row["question"],
                "answer": row["answer"],
                "answer_nll": scored[(split.name, r, "answer", 0)][0],
                "answer_tokens": scored[(split.name, r, "answer", 0)][1],
                "reference_nll": scored[(split.name, r, ref_kind, 0)][0],
                "reference_tokens": scored[(split.name, r, ref_kind, 0)][1],
                "perturbed_nll": [p[0] for p in perturbed],
                "perturbed_tokens": [p[1] for p in perturbed],
                "generation": generation,
                "rouge_l": None if generation is None else text.rouge_l_recall(generation, row["answer"]),
            }
        )
    return out


def tofu_metrics(
    examples: list[dict[str, Any]],
    splits: Sequence[EvalSplitSpec],
    retrain_forget_truth_ratios: np.ndarray | None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """TOFU's metrics (DESIGN §6) from per-example statistics; adds `prob` and `truth_ratio` to each
    example. Forget quality is measured against the Retrain model's forget truth ratios (None:
    this model *is* Retrain, FQ = 1 by construction)."""
    metrics: dict[str, float] = {}
    done: list[dict[str, Any]] = []
    for split in splits:
        rows = sorted((e for e in examples if e["split"] == split.name), key=lambda e: e["index"])
        answer_nll = np.array([e["answer_nll"] for e in rows])
        answer_n = np.array([e["answer_tokens"] for e in rows], dtype=np.float64)
        perturbed_nll = np.array([e["perturbed_nll"] for e in rows])
        perturbed_n = np.array([e["perturbed_tokens"] for e in rows], dtype=np.float64)
        if split.choice_prob:
            prob = tofu.choice_prob(answer_nll, answer_n, perturbed_nll, perturbed_n)
        else:
            prob = tofu.answer_prob(answer_nll, answer_n)
        ratio = tofu.truth_ratio(
            perturbed_nll,
            perturbed_n,
            np.array([e["reference_nll"] for e in rows]),
            np.array([e["reference_tokens"] for e in rows], dtype=np.float64),
        )
        rouge = [e["rouge_l"] for e in rows if e["rouge_l"] is not None]
        metrics[f"{split.name}_prob"] = float(np.mean(prob))
        metrics[f"{split.name}_rouge"] = float(np.mean(rouge)) if rouge else float("nan")
        score = tofu.forget_truth_score if split.name == "forget" else tofu.utility_truth_score
        metrics[f"{split.name}_truth_ratio"] = float(score(ratio))
        done.extend(
            dict(e, prob=float(p), truth_ratio=float(t)) for e, p, t in zip(rows, prob, ratio, strict=True)
        )

    forget_ratios = np.array([e["truth_ratio"] for e in done if e["split"] == "forget"])
    against = forget_ratios if retrain_forget_truth_ratios is None else retrain_forget_truth_ratios
    fq = tofu.forget_quality(forget_ratios, against)
    metrics["forget_quality"] = fq.pvalue
    metrics["forget_quality_ks_statistic"] = fq.statistic
    metrics["forget_quality_at_floor"] = float(fq.at_floor)
    metrics["model_utility"] = tofu.model_utility({k: metrics[k] for k in tofu.MODEL_UTILITY_KEYS})
    return metrics, done


def evaluate_tofu(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    splits: Sequence[EvalSplit],
    settings: EvalSettings,
    max_length: int,
    retrain_forget_truth_ratios: np.ndarray | None,
) -> TofuEvaluation:
    """In-process evaluation: per-example statistics of every split, then the metrics."""
    encoder = QAEncoder(tokenizer, prompt_format)
    examples: list[dict[str, Any]] = []
    for split in splits:
        examples += example_statistics(model, encoder, split, split.rows, settings, max_length)
    metrics, examples = tofu_metrics(examples, splits, retrain_forget_truth_ratios)
    return TofuEvaluation(metrics=metrics, examples=examples)
