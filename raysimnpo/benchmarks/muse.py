"""The MUSE benchmark (Shi et al. 2024; the SimNPO paper's Table 3 / Table A1 setting).

* Data: `muse-bench/MUSE-News` or `muse-bench/MUSE-Books` (configs raw / verbmem / knowmem /
  privleak, `raysimnpo.data.generators.muse.MUSE_LAYOUT`), a local folder of the same layout, or the
  generated fictitious-news analog.
* Training and unlearning are on raw text: each text is cut into fixed-length chunks
  (`chunk_length` tokens, BOS first) with the loss on every token after BOS. Original = forget +
  retain1 + retain2, Retrain = retain1 + retain2; unlearning forgets `raw/forget` and regularises on
  `raw/retain1`. With `target_model` / `retrain_model` set (the released `muse-bench/MUSE-News_target`
  and `..._retrain`), those models are used as they are instead of being fine-tuned here.
* Metrics (`raysimnpo.maths.metrics.muse`): VerbMem on D_f, KnowMem on D_f and D_r, PrivLeak against the
  AUC of Retrain (ours, or MUSE's published constant with `auc_retrain: published`).
* Default sweep objectives: |PrivLeak| (closest to 0) min, KnowMem on D_r max.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..config.base import Frozen
from ..data.benchmark_sources import BenchmarkSource, Rows, check_fields, read_hub_rows, read_local_rows
from ..data.generators.muse import GENERATOR_VERSION, MuseGeneratorConfig, generate_muse_dataset
from ..data.sources import generated_folder
from ..maths.metrics import muse as muse_metrics
from .base import RawTextBenchmark

if TYPE_CHECKING:  # torch and transformers load with the first model, not with the config
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..data.formatting import EncodedExample

NAME = "muse"
HUB_IDS: dict[str, str] = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
RELEASED_MODELS: dict[str, tuple[str, str]] = {
    "news": ("muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain"),
    "books": ("muse-bench/MUSE-Books_target", "muse-bench/MUSE-Books_retrain"),
}
"""corpus -> (target, retrain) hub ids of the models MUSE released."""
DEFAULT_OBJECTIVES: tuple[tuple[str, Literal["max", "min"]], ...] = (
    ("privleak_abs", "min"),
    ("knowmem_retain", "max"),
)
HEADLINE_METRICS = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak")


class MuseSource(BenchmarkSource):
    """Where MUSE rows come from: `hub` (`hub_id`, default by corpus), `local` (`path` with
    `<config>/<split>.jsonl|.json|.parquet`) or `generated` (`generator`)."""

    hub_id: str | None = Field(None, description="None: muse-bench/MUSE-News or MUSE-Books by corpus")
    generator: MuseGeneratorConfig = MuseGeneratorConfig()


class MuseSettings(Frozen):
    """The `muse:` section of a run."""

    corpus: Literal["news", "books"] = "news"
    source: MuseSource = MuseSource()
    chunk_length: int = Field(128, ge=8, description="tokens per raw-text training chunk (MUSE: 2048)")
    verbmem_max_new_tokens: int = Field(muse_metrics.VERBMEM_MAX_NEW_TOKENS, gt=0)
    knowmem_max_new_tokens: int = Field(muse_metrics.KNOWMEM_MAX_NEW_TOKENS, gt=0)
    knowmem_icl_shots: int | None = Field(
        None, ge=0, description="in-context QA pairs of KnowMem prompts: the first N of *_qa_icl (None: all)"
    )
    min_k: float = Field(muse_metrics.MIN_K, gt=0, le=1, description="K of the Min-K% Prob score")
    auc_retrain: Literal["retrain", "published"] = Field(
        "retrain", description="PrivLeak's AUC_retrain: our Retrain model's, or MUSE's published constant"
    )
    target_model: str | None = Field(None, description="use this model as the Original, without fine-tuning")
    retrain_model: str | None = Field(None, description="use this model as Retrain, without fine-tuning")


@dataclass(frozen=True)
class MuseRunData:
    """Every text and QA set one MUSE run needs."""

    settings: MuseSettings
    raw: dict[str, list[str]]
    verbmem: Rows
    knowmem: dict[str, Rows]
    privleak: dict[str, list[str]]
    source_name: str = ""

    def training_texts(self, kind: str) -> list[str]:
        """original: forget + retain1 + retain2; retrain: retain1 + retain2; forget; retain: retain1."""
        raw = self.raw
        return {
            "original": raw["forget"] + raw["retain1"] + raw["retain2"],
            "retrain": raw["retain1"] + raw["retain2"],
            "forget": raw["forget"],
            "retain": raw["retain1"],
        }[kind]

    def training_examples(
        self, kind: str, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> list[EncodedExample]:
        from ..data.text_encoding import encode_corpus

        return encode_corpus(
            tokenizer, self.training_texts(kind), min(self.settings.chunk_length, max_length)
        )

    def corpus(self) -> list[str]:
        texts = [t for split in self.raw.values() for t in split]
        texts += [r["prompt"] for r in self.verbmem] + [r["gt"] for r in self.verbmem]
        texts += [r[k] for rows in self.knowmem.values() for r in rows for k in ("question", "answer")]
        return list(dict.fromkeys(texts))

    @property
    def forget_count(self) -> int:
        return len(self.raw["forget"])


_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "raw": {"text": str},
    "verbmem": {"prompt": str, "gt": str},
    "knowmem": {"question": str, "answer": str},
    "privleak": {"text": str},
}


def _reader(settings: MuseSettings, cache_dir: str | os.PathLike[str] | None) -> tuple[Any, str]:
    source = settings.source
    if source.kind == "hub":
        hub_id = source.hub_id or HUB_IDS[settings.corpus]
        return (lambda config, split: read_hub_rows(hub_id, config, split)), f"hub dataset {hub_id}"
    if source.kind == "local":
        assert source.path is not None
        folder = Path(source.path).expanduser()
    else:
        folder = generated_folder(
            "muse",
            source.generator,
            GENERATOR_VERSION,
            lambda out: generate_muse_dataset(out, source.generator),
            cache_dir,
        )
    return (lambda config, split: read_local_rows(folder, config, split)), f"folder {folder}"


def load_muse_run_data(
    settings: MuseSettings, cache_dir: str | os.PathLike[str] | None = None
) -> MuseRunData:
    """Read every MUSE config/split a run needs from `settings.source`, checking the fields."""
    read, name = _reader(settings, cache_dir)

    def rows(config: str, split: str) -> Rows:
        found, where = read(config, split)
        check_fields(found, _FIELDS[config], where)
        return found

    raw = {s: [r["text"] for r in rows("raw", s)] for s in ("forget", "retain1", "retain2", "holdout")}
    knowmem = {s: rows("knowmem", s) for s in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")}
    privleak = {s: [r["text"] for r in rows("privleak", s)] for s in ("forget", "holdout")}
    return MuseRunData(
        settings=settings,
        raw=raw,
        verbmem=rows("verbmem", "forget"),
        knowmem=knowmem,
        privleak=privleak,
        source_name=name,
    )


@dataclass
class MuseEvaluation:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)


def _limited(rows: list[Any], limit: int | None) -> list[Any]:
    return rows if limit is None else rows[:limit]


def _example(split: str, index: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "split": split,
        "index": index,
        "prompt": None,
        "reference": None,
        "generation": None,
        "rouge_l_f1": None,
        "min_k_score": None,
        "n_tokens": None,
    }
    row.update(values)
    return row


def evaluation_items(data: MuseRunData, generation_limit: int | None) -> list[dict[str, Any]]:
    """One item per evaluated text: VerbMem's forget prompts, KnowMem's forget and retain questions
    (with the in-context QA pairs already in `prompt`), and PrivLeak's forget and holdout texts."""
    settings = data.settings
    items: list[dict[str, Any]] = [
        {"split": "verbmem_forget", "index": i, "prompt": r["prompt"], "reference": r["gt"]}
        for i, r in enumerate(_limited(data.verbmem, generation_limit))
    ]
    for name, qa, icl in (("forget", "forget_qa", "forget_qa_icl"), ("retain", "retain_qa", "retain_qa_icl")):
        shots = [(r["question"], r["answer"]) for r in data.knowmem[icl]][: settings.knowmem_icl_shots]
        items += [
            {
                "split": f"knowmem_{name}",
                "index": i,
                "prompt": muse_metrics.few_shot_prompt(shots, r["question"]),
                "question": r["question"],
                "reference": r["answer"],
            }
            for i, r in enumerate(_limited(data.knowmem[qa], generation_limit))
        ]
    for split in ("forget", "holdout"):
        items += [
            {"split": f"privleak_{split}", "index": i, "text": t} for i, t in enumerate(data.privleak[split])
        ]
    return items


def score_items(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: MuseSettings,
    items: list[dict[str, Any]],
    batch_size: int,
    max_length: int,
) -> list[dict[str, Any]]:
    """Per-example rows of some items, one batch per split (in the order met): the greedy
    continuation or answer and its ROUGE-L F1, or a text's Min-K% score."""
    # Scoring and generation load torch; imported here so that validating a config does not.
    from ..data.text_encoding import encode_prompt_text, encode_scored_text
    from ..maths.metrics.mia import min_k_percent_scores
    from ..maths.metrics.text import rouge_l_f1_batch
    from ..training.scoring import generate_greedy, score_token_logprobs

    def generate(texts: list[str], new_tokens: int) -> list[str]:
        room = max(1, int(getattr(model.config, "max_position_embeddings", 10**9)) - new_tokens)
        prompts = [encode_prompt_text(tokenizer, t)[-room:] for t in texts]
        return generate_greedy(model, tokenizer, prompts, new_tokens, batch_size)

    by_split: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_split.setdefault(item["split"], []).append(item)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples: list[dict[str, Any]] = []
    for split, rows in by_split.items():
        if split == "verbmem_forget":
            outputs = generate([r["prompt"] for r in rows], settings.verbmem_max_new_tokens)
            scores = rouge_l_f1_batch(outputs, [r["reference"] for r in rows])
            examples += [
                _example(
                    split,
                    r["index"],
                    prompt=r["prompt"],
                    reference=r["reference"],
                    generation=o,
                    rouge_l_f1=float(s),
                )
                for r, o, s in zip(rows, outputs, scores, strict=True)
            ]
        elif split.startswith("knowmem_"):
            generated = generate([r["prompt"] for r in rows], settings.knowmem_max_new_tokens)
            answers = [muse_metrics.cut_answer(g) for g in generated]
            scores = rouge_l_f1_batch(answers, [r["reference"] for r in rows])
            examples += [
                _example(
                    split,
                    r["index"],
                    prompt=r["question"],
                    reference=r["reference"],
                    generation=a,
                    rouge_l_f1=float(s),
                )
                for r, a, s in zip(rows, answers, scores, strict=True)
            ]
        else:
            encoded = [encode_scored_text(tokenizer, r["text"], max_length) for r in rows]
            logprobs = score_token_logprobs(model, encoded, batch_size, int(pad_id))
            min_k = min_k_percent_scores(logprobs, settings.min_k)
            examples += [
                _example(split, r["index"], min_k_score=float(s), n_tokens=int(lp.size))
                for r, s, lp in zip(rows, min_k, logprobs, strict=True)
            ]
    return examples


def aggregate(
    settings: MuseSettings, examples: list[dict[str, Any]], auc_retrain: float | None
) -> MuseEvaluation:
    """VerbMem, KnowMem f/r and PrivLeak from per-example rows. `auc_retrain` None: this model is
    Retrain (PrivLeak 0 by definition); otherwise PrivLeak is measured against it."""
    from ..maths.metrics.mia import auc

    by_split: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(examples, key=lambda e: e["index"]):
        by_split.setdefault(e["split"], []).append(e)
    metrics: dict[str, float] = {}
    for split in ("verbmem_forget", "knowmem_forget", "knowmem_retain"):
        metrics[split] = float(np.mean([e["rouge_l_f1"] for e in by_split.get(split, [])]))
    min_k = {
        s: np.array([e["min_k_score"] for e in by_split.get(f"privleak_{s}", [])])
        for s in ("forget", "holdout")
    }
    model_auc = auc(min_k["holdout"], min_k["forget"])
    metrics["privleak_auc"] = model_auc
    if settings.auc_retrain == "published":
        auc_retrain = muse_metrics.PUBLISHED_AUC_RETRAIN[settings.corpus]
    metrics["privleak"] = 0.0 if auc_retrain is None else muse_metrics.privleak(model_auc, auc_retrain)
    metrics["privleak_abs"] = abs(metrics["privleak"])
    order = {s: i for i, s in enumerate(_SPLITS)}
    ordered = sorted(examples, key=lambda e: (order[e["split"]], e["index"]))
    return MuseEvaluation(metrics=metrics, examples=ordered)


_SPLITS = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget", "privleak_holdout")


def evaluate_muse(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: MuseRunData,
    batch_size: int,
    generation_limit: int | None,
    max_length: int,
    auc_retrain: float | None,
) -> MuseEvaluation:
    """VerbMem, KnowMem f/r and PrivLeak of `model`, with per-example values. `auc_retrain` None: this
    model is Retrain (PrivLeak 0 by definition); otherwise PrivLeak is measured against it."""
    items = evaluation_items(data, generation_limit)
    examples = score_items(model, tokenizer, data.settings, items, batch_size, max_length)
    return aggregate(data.settings, examples, auc_retrain)


# --------------------------------------------------------------------------------------------
# The Benchmark protocol (`raysimnpo.benchmarks.base`)
# --------------------------------------------------------------------------------------------

EVALUATION_ONLY: tuple[str, ...] = (
    "verbmem_max_new_tokens",
    "knowmem_max_new_tokens",
    "knowmem_icl_shots",
    "min_k",
    "auc_retrain",
    "retrain_model",
)
"""Settings of the `muse:` section that change the evaluation but not what Original trains on."""


class MuseBenchmark(RawTextBenchmark):
    """MUSE behind the `Benchmark` protocol: raw-text chunks, PrivLeak against Retrain's AUC."""

    name = NAME
    headline_metrics = HEADLINE_METRICS
    metrics: tuple[str, ...] = (*HEADLINE_METRICS, "privleak_abs", "privleak_auc")
    default_objectives: tuple[str, ...] = tuple(m for m, _ in DEFAULT_OBJECTIVES)
    relearning = False
    own_sweep = False

    def load(self, config: Any) -> MuseRunData:
        return load_muse_run_data(config.muse, Path(config.cache_dir))

    def evaluation_items(self, ws: Any) -> list[dict[str, Any]]:
        return evaluation_items(ws.data, ws.config.evaluation.generation_limit)

    def score_items(self, model: PreTrainedModel, ws: Any, items: Any) -> list[dict[str, Any]]:
        return score_items(
            model,
            ws.tokenizer,
            ws.data.settings,
            list(items),
            ws.config.evaluation.batch_size,
            ws.config.prepare.max_length,
        )

    def aggregate(self, ws: Any, examples: list[dict[str, Any]], reference: Any) -> MuseEvaluation:
        return aggregate(ws.data.settings, examples, reference)

    def retrain_reference(self, retrain: Any) -> float | None:
        """Retrain's forget/holdout AUC: PrivLeak's AUC_retrain."""
        return None if retrain is None else float(retrain.metrics["privleak_auc"])

    def planned_workload(self, run: Any) -> None:
        """The resource plan's sizes are not known without loading this benchmark's data."""
        return None

    def has_retrain(self, config: Any) -> bool:
        return True

    def released_model(self, config: Any, role: str) -> str | None:
        """MUSE's released target / retrain models, used as Original / Retrain when set."""
        return config.muse.target_model if role == "original" else config.muse.retrain_model

    def cache_key_parts(self, config: Any, part: str) -> tuple[Any, ...]:
        settings = config.muse.model_dump(mode="json")
        if part == "original":
            training = {k: v for k, v in settings.items() if k not in EVALUATION_ONLY}
            return (NAME, training, config.model, config.prepare, str(config.seed))
        if part == "retrain":
            return (str(config.muse.retrain_model),)
        return (settings,)
