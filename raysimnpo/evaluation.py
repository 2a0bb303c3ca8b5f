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

from raysimnpo.benchmarks.tofu import EvalSplit
from raysimnpo.config import EvalSettings
from raysimnpo.data.formatting import EncodedExample, PromptFormat, encode_prompt, encode_qa
from raysimnpo.metrics import text, tofu
from raysimnpo.scoring import generate_greedy, score_sequences


@dataclass
class TofuEvaluation:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def truth_ratios(self, split: str = "forget") -> np.ndarray:
        return np.array([e["truth_ratio"] for e in self.examples if e["split"] == split], dtype=np.float64)


@dataclass
class _Sequences:
    """Every answer to score, flattened, with where each one belongs."""

    encoded: list[EncodedExample] = field(default_factory=list)
    owner: list[tuple[str, int, str, int]] = field(default_factory=list)  # split, row, kind, j

    def add(self, example: EncodedExample, split: str, row: int, kind: str, j: int = 0) -> None:
        self.encoded.append(example)
        self.owner.append((split, row, kind, j))


def evaluate_tofu(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    splits: Sequence[EvalSplit],
    settings: EvalSettings,
    max_length: int,
    retrain_forget_truth_ratios: np.ndarray | None,
) -> TofuEvaluation:
    """Prob, ROUGE-L recall and truth ratio per split, forget quality against the Retrain model's
    forget truth ratios (None: this model *is* Retrain, so FQ = 1 by construction), model utility."""
    seqs = _Sequences()
    for split in splits:
        for r, row in enumerate(split.rows):
            q = row["question"]
            seqs.add(encode_qa(tokenizer, q, row["answer"], prompt_format, max_length), split.name, r, "answer")
            if split.reference_field != "answer":
                ref = encode_qa(tokenizer, q, row[split.reference_field], prompt_format, max_length)
                seqs.add(ref, split.name, r, "reference")
            for j, wrong in enumerate(row["perturbed_answer"]):
                seqs.add(encode_qa(tokenizer, q, wrong, prompt_format, max_length), split.name, r, "perturbed", j)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll, n_tokens = score_sequences(model, seqs.encoded, settings.batch_size, pad_id)

    scored: dict[tuple[str, int, str, int], tuple[float, float]] = {
        owner: (float(nll[i]), float(n_tokens[i])) for i, owner in enumerate(seqs.owner)
    }
    metrics: dict[str, float] = {}
    examples: list[dict[str, Any]] = []
    for split in splits:
        rows = split.rows
        limit = len(rows) if settings.generation_limit is None else min(len(rows), settings.generation_limit)
        prompts = [encode_prompt(tokenizer, row["question"], prompt_format) for row in rows[:limit]]
        generations = generate_greedy(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
        m = len(rows[0]["perturbed_answer"])
        answer = np.array([scored[(split.name, r, "answer", 0)] for r in range(len(rows))])
        ref_kind = "answer" if split.reference_field == "answer" else "reference"
        reference = np.array([scored[(split.name, r, ref_kind, 0)] for r in range(len(rows))])
        perturbed = np.array(
            [[scored[(split.name, r, "perturbed", j)] for j in range(m)] for r in range(len(rows))]
        )
        if split.choice_prob:
            prob = tofu.choice_prob(answer[:, 0], answer[:, 1], perturbed[..., 0], perturbed[..., 1])
        else:
            prob = tofu.answer_prob(answer[:, 0], answer[:, 1])
        ratio = tofu.truth_ratio(perturbed[..., 0], perturbed[..., 1], reference[:, 0], reference[:, 1])
        rouge = np.array([text.rouge_l_recall(g, row["answer"]) for g, row in zip(generations, rows, strict=False)])

        metrics[f"{split.name}_prob"] = float(np.mean(prob))
        metrics[f"{split.name}_rouge"] = float(np.mean(rouge)) if len(rouge) else float("nan")
        score = tofu.forget_truth_score if split.name == "forget" else tofu.utility_truth_score
        metrics[f"{split.name}_truth_ratio"] = float(score(ratio))
        for r, row in enumerate(rows):
            examples.append(
                {
                    "split": split.name,
                    "index": r,
                    "question": row["question"],
                    "answer": row["answer"],
                    "answer_tokens": int(answer[r, 1]),
                    "answer_nll": answer[r, 0],
                    "reference_nll": reference[r, 0],
                    "reference_tokens": int(reference[r, 1]),
                    "perturbed_nll": perturbed[r, :, 0].tolist(),
                    "perturbed_tokens": perturbed[r, :, 1].astype(int).tolist(),
                    "prob": float(prob[r]),
                    "truth_ratio": float(ratio[r]),
                    "generation": generations[r] if r < limit else None,
                    "rouge_l": float(rouge[r]) if r < limit else None,
                }
            )

    forget_ratios = np.array([e["truth_ratio"] for e in examples if e["split"] == "forget"])
    against = forget_ratios if retrain_forget_truth_ratios is None else retrain_forget_truth_ratios
    fq = tofu.forget_quality(forget_ratios, against)
    metrics["forget_quality"] = fq.pvalue
    metrics["forget_quality_ks_statistic"] = fq.statistic
    metrics["forget_quality_at_floor"] = float(fq.at_floor)
    metrics["model_utility"] = tofu.model_utility(
        {k: metrics[k] for k in tofu.MODEL_UTILITY_KEYS}
    )
    return TofuEvaluation(metrics=metrics, examples=examples)
