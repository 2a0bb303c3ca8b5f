"""The TOFU benchmark definition (Maini et al., 2024; the SimNPO paper's §5 setting).

* Forget splits forget01/05/10 (the last 2/10/20 of 200 authors in the real data), each paired with
  retain99/95/90 (the rest of `full`), its `_perturbed` version (the forget evaluation set) and
  holdout01/05/10 (as many unseen authors, for membership inference).
* Evaluation sets (DESIGN §6): forget = forgetXX_perturbed, retain = retain_perturbed, and the
  utility sets real_authors_perturbed / world_facts_perturbed. The truth ratio compares the
  perturbed answers with a reference: the paraphrased answer on forget/retain, the answer itself on
  real_authors/world_facts, where Prob is also the normalised choice probability
  P̃(answer) / (P̃(answer) + Σ_j P̃(perturbed_j)).
* Default sweep objectives: forget quality (KS-test p-value against Retrain) and model utility
  (harmonic mean of the nine utility numbers), both maximised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.generators.tofu import FORGET_SPLIT_RE, holdout_split_for, perturbed_split_for, retain_split_for
from ..data.sources import TofuSource, list_splits, load_split, local_folder
from ..errors import UserInputError

NAME = "tofu"
FORGET_SPLITS: tuple[str, ...] = ("forget01", "forget05", "forget10")
DEFAULT_FORGET_SPLIT = "forget10"
DEFAULT_OBJECTIVES: tuple[tuple[str, Literal["max", "min"]], ...] = (
    ("forget_quality", "max"),
    ("model_utility", "max"),
)
"""(metric, direction) pairs the sweep optimises by default."""

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class ForgetPairing:
    """The splits that go with one forget split (TOFU's pairing)."""

    forget: str
    retain: str
    forget_perturbed: str
    holdout: str


@dataclass(frozen=True)
class EvalSplitSpec:
    """An evaluation set without its rows.

    name: the metric prefix (`forget`, `retain`, `real_authors`, `world_facts`); split: the file;
    reference_field: the truth ratio's reference answer; choice_prob: Prob is the normalised choice
    probability rather than the mean P̃ of the answer; n_perturbed: perturbed answers per row in
    TOFU (informative; the metrics take whatever number a split has)."""

    name: str
    split: str
    reference_field: str
    choice_prob: bool
    n_perturbed: int


@dataclass(frozen=True)
class EvalSplit(EvalSplitSpec):
    """An evaluation set with its rows."""

    rows: Rows = field(default_factory=list)


UTILITY_SPECS: tuple[EvalSplitSpec, ...] = (
    EvalSplitSpec("retain", "retain_perturbed", "paraphrased_answer", False, 5),
    EvalSplitSpec("real_authors", "real_authors_perturbed", "answer", True, 3),
    EvalSplitSpec("world_facts", "world_facts_perturbed", "answer", True, 3),
)


def pairing(forget_split: str) -> ForgetPairing:
    """forgetXX -> (retain{100-XX}, forgetXX_perturbed, holdoutXX); any forgetXX name is accepted here."""
    if FORGET_SPLIT_RE.match(forget_split) is None:
        raise UserInputError(
            f"data.forget_split: {forget_split!r} is not a forget split; allowed: {', '.join(FORGET_SPLITS)}"
        )
    return ForgetPairing(
        forget=forget_split,
        retain=retain_split_for(forget_split),
        forget_perturbed=perturbed_split_for(forget_split),
        holdout=holdout_split_for(forget_split),
    )


def eval_split_specs(forget_split: str) -> tuple[EvalSplitSpec, ...]:
    """The four evaluation sets of a run: forget first, then the three utility sets."""
    forget = EvalSplitSpec("forget", pairing(forget_split).forget_perturbed, "paraphrased_answer", False, 5)
    return (forget, *UTILITY_SPECS)


def allowed_forget_splits(
    source: TofuSource, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str, ...]:
    """TOFU's three forget splits; a generated source offers its configured ones, and a local folder
    also any other `forgetXX` file it holds."""
    if source.kind == "generated":
        return tuple(source.generator.forget_fractions)
    if source.kind == "local":
        folder = local_folder(source, cache_dir)
        found = [s for s in list_splits(folder) if FORGET_SPLIT_RE.match(s)] if folder else []
        return tuple(sorted(set(FORGET_SPLITS) | set(found)))
    return FORGET_SPLITS


def required_splits(forget_split: str) -> tuple[str, ...]:
    """Every split a run reads."""
    p = pairing(forget_split)
    return ("full", p.forget, p.retain, p.holdout, *(s.split for s in eval_split_specs(forget_split)))


@dataclass(frozen=True)
class TofuRunData:
    """Every row one run needs: training sets, evaluation sets and the holdout set."""

    source: TofuSource
    pairing: ForgetPairing
    full: Rows
    forget: Rows
    retain: Rows
    holdout: Rows
    eval_splits: tuple[EvalSplit, ...]

    @property
    def forget_split(self) -> str:
        return self.pairing.forget

    def eval_split(self, name: str) -> EvalSplit:
        for split in self.eval_splits:
            if split.name == name:
                return split
        raise KeyError(f"no evaluation split {name!r}; have {[s.name for s in self.eval_splits]}")

    @property
    def utility_train_rows(self) -> Rows:
        """The real_authors and world_facts QA as training rows (question, answer), for models that
        start from random weights and so know no 'world' facts."""
        return [
            {"question": r["question"], "answer": r["answer"]}
            for s in self.eval_splits
            if s.name in ("real_authors", "world_facts")
            for r in s.rows
        ]

    def texts(self) -> Iterator[str]:
        """Every question and answer text of the run, in a fixed order."""
        groups: list[Rows] = [self.full, self.holdout, *(s.rows for s in self.eval_splits)]
        for rows in groups:
            for row in rows:
                yield row["question"]
                yield row["answer"]
                for key in ("paraphrased_question", "paraphrased_answer"):
                    if isinstance(row.get(key), str):
                        yield row[key]
                yield from row.get("perturbed_answer") or ()

    def corpus(self) -> list[str]:
        """The texts a tokenizer trained on this data should cover (deduplicated, order kept)."""
        return list(dict.fromkeys(self.texts()))


def _check_same_questions(forget: Rows, perturbed: Rows, p: ForgetPairing) -> None:
    if len(forget) != len(perturbed):
        raise UserInputError(
            f"{p.forget_perturbed}: has {len(perturbed)} rows but {p.forget} has {len(forget)}; "
            "they must hold the same questions in the same order"
        )
    for i, (a, b) in enumerate(zip(forget, perturbed, strict=True)):
        if a["question"] != b["question"]:
            raise UserInputError(
                f"{p.forget_perturbed}: row {i + 1} asks {b['question']!r} but {p.forget} row {i + 1} asks "
                f"{a['question']!r}; they must hold the same questions in the same order"
            )


def load_tofu_run_data(
    source: TofuSource, forget_split: str, cache_dir: str | os.PathLike[str] | None = None
) -> TofuRunData:
    """Load every split a run on `forget_split` needs from `source` (generated data is cached
    under `cache_dir`). A forget split the source does not offer is one UserInputError listing
    the allowed ones."""
    allowed = allowed_forget_splits(source, cache_dir)
    if forget_split not in allowed:
        raise UserInputError(
            f"data.forget_split: {forget_split!r} is not a forget split of {source.describe()}; "
            f"allowed: {', '.join(allowed)}"
        )
    p = pairing(forget_split)
    cache = Path(cache_dir) if cache_dir is not None else None

    def read(split: str) -> Rows:
        return load_split(source, split, cache_dir=cache)

    forget = read(p.forget)
    eval_splits = tuple(
        EvalSplit(**vars(spec), rows=read(spec.split)) for spec in eval_split_specs(forget_split)
    )
    _check_same_questions(forget, eval_splits[0].rows, p)
    return TofuRunData(
        source=source,
        pairing=p,
        full=read("full"),
        forget=forget,
        retain=read(p.retain),
        holdout=read(p.holdout),
        eval_splits=eval_splits,
    )


# ------------------------------------------------------------------ released Original / Retrain models

RELEASED_RETRAIN_SUFFIX = re.compile(r"_retain(\d\d)$")
"""open-unlearning names its Retrain models `..._retainXX`: fine-tuned on retainXX = 100 - forgetXX."""


def check_released_model(value: str) -> str:
    """A released Original or Retrain: a hub id `org/name`, checked for its form only (offline), or
    a local Hugging Face folder (save_pretrained's layout: config.json and safetensors or torch
    weights), returned as an absolute path so that Ray workers in other folders find it."""
    from ..models import looks_like_hub_id

    path = Path(value).expanduser()
    if path.is_dir():
        weights = [p.name for p in path.iterdir() if p.suffix in {".safetensors", ".bin"}]
        missing = [
            what
            for what, ok in (("config.json", (path / "config.json").is_file()), ("weights", weights))
            if not ok
        ]
        if missing:
            raise ValueError(
                f"{path} has no {' and no '.join(missing)}; a released model folder holds config.json and "
                "model*.safetensors (or pytorch_model*.bin), as save_pretrained writes them"
            )
        return str(path.resolve())
    if path.exists() or not looks_like_hub_id(value):
        raise ValueError(
            f"{value!r} is neither a model folder nor a hub id org/name "
            "(e.g. open-unlearning/tofu_Llama-2-7b-chat-hf_full)"
        )
    return value


def check_released_pair(original: str | None, retrain: str | None, forget_split: str) -> None:
    """Both or neither (forget quality compares the Original with a Retrain of the same recipe), and a
    Retrain named `..._retainXX` must be the one of the run's forget split."""
    if (original is None) != (retrain is None):
        given, other = (
            ("original_model", "retrain_model") if original else ("retrain_model", "original_model")
        )
        raise ValueError(
            f"data.{given} is set but data.{other} is not; allowed: both (released models used as they are) "
            "or neither (both fine-tuned by the prepare stage)"
        )
    match = RELEASED_RETRAIN_SUFFIX.search(retrain or "")
    expected = retain_split_for(forget_split)
    if match is not None and f"retain{match.group(1)}" != expected:
        raise ValueError(
            f"data.retrain_model: {retrain} was fine-tuned on retain{match.group(1)}, but forget_split "
            f"{forget_split} pairs with {expected}; allowed: the ..._{expected} model"
        )


def released_model(run: Any, name: str) -> str | None:
    """The released model a TOFU run uses as its prepared `name` (Original / Retrain), or None."""
    if run.benchmark != NAME:
        return None
    return run.data.original_model if name == "Original" else run.data.retrain_model


def released_models(run: Any) -> tuple[str | None, str | None]:
    """(Original, Retrain) released models of a TOFU run; (None, None) when the sweep fine-tunes them."""
    return released_model(run, "Original"), released_model(run, "Retrain")


# --------------------------------------------------------------------------------------------
# The Benchmark protocol (`raysimnpo.benchmarks.base`)
# --------------------------------------------------------------------------------------------

TOFU_METRICS: tuple[str, ...] = (
    "forget_quality",
    "model_utility",
    *(
        f"{s}_{m}"
        for s in ("forget", "retain", "real_authors", "world_facts")
        for m in ("prob", "rouge", "truth_ratio")
    ),
    "forget_quality_ks_statistic",
)
"""Every metric of a TOFU evaluation an objective may name, in the order tables show them."""


class TofuBenchmark:
    """TOFU behind the `Benchmark` protocol: QA pairs, forget quality against Retrain's truth ratios."""

    name = NAME
    headline_metrics: tuple[str, ...] = ("forget_quality", "model_utility")
    metrics = TOFU_METRICS
    default_objectives: tuple[str, ...] = tuple(m for m, _ in DEFAULT_OBJECTIVES)
    relearning = True
    own_sweep = False
    training_unit = "QA"

    @property
    def methods(self) -> tuple[str, ...]:
        from .base import all_methods

        return all_methods()

    def check_method(self, method: str) -> None:
        """Every method runs on QA pairs (an unknown name is refused by the method's own config)."""

    def load(self, config: Any) -> TofuRunData:
        return load_tofu_run_data(config.data.source, config.data.forget_split, Path(config.cache_dir))

    def corpus(self, data: TofuRunData) -> list[str]:
        return data.corpus()

    def training_examples(self, ws: Any, kind: str, max_length: int) -> list[Any]:
        """Original: full (+ the utility QA when `data.train_on_utility_splits`), Retrain: retainXX (+ the
        same), unlearning: forgetXX and retainXX."""
        data: TofuRunData = ws.data
        utility = data.utility_train_rows if ws.config.data.train_on_utility_splits else []
        rows = {
            "original": data.full + utility,
            "retrain": data.retain + utility,
            "forget": data.forget,
            "retain": data.retain,
        }[kind]
        return ws.encode(rows, max_length)

    def reference_examples(self, ws: Any, max_length: int) -> tuple[list[Any], list[Any]]:
        from ..data.refusals import refusal_for

        data: TofuRunData = ws.data
        refusals = [dict(r, answer=refusal_for(i, ws.config.seed)) for i, r in enumerate(data.forget)]
        return ws.encode(data.forget, max_length), ws.encode(refusals, max_length)

    def check_encoding(self, ws: Any) -> None:
        data: TofuRunData = ws.data
        ws.encode(data.full + data.utility_train_rows)
        ws.encode(data.full, ws.config.unlearn.max_length)

    def forget_description(self, data: TofuRunData) -> str:
        return f"{len(data.forget)} forget QA"

    def evaluation_items(self, ws: Any) -> list[dict[str, Any]]:
        """One item per evaluation question: its split (forget, retain, real_authors, world_facts),
        its position in the split and its row."""
        return [
            {"split": s.name, "index": i, "row": r} for s in ws.data.eval_splits for i, r in enumerate(s.rows)
        ]

    def score_items(self, model: Any, ws: Any, items: Any) -> list[dict[str, Any]]:
        """`evaluation.example_statistics` of the items, one call per split (in the order met)."""
        from .tofu_evaluation import example_statistics

        by_split: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_split.setdefault(item["split"], []).append(item)
        out: list[dict[str, Any]] = []
        for split, group in by_split.items():
            out += example_statistics(
                model,
                ws.encoder,
                ws.data.eval_split(split),
                [item["row"] for item in group],
                ws.config.evaluation,
                ws.config.prepare.max_length,
                indices=[item["index"] for item in group],
            )
        return out

    def aggregate(self, ws: Any, examples: list[dict[str, Any]], reference: Any) -> Any:
        """TOFU's metrics (`evaluation.tofu_metrics`); `reference`: Retrain's forget truth ratios
        (None: this model is Retrain)."""
        import numpy as np

        from .tofu_evaluation import TofuEvaluation, tofu_metrics

        ratios = None if reference is None else np.asarray(reference, dtype=np.float64)
        metrics, done = tofu_metrics(examples, ws.data.eval_splits, ratios)
        return TofuEvaluation(metrics=metrics, examples=done)

    def retrain_reference(self, retrain: Any) -> list[float] | None:
        """Retrain's per-example forget truth ratios: forget quality is a KS test against them."""
        if retrain is None:
            return None
        return [float(e["truth_ratio"]) for e in retrain.examples if e["split"] == "forget"]

    def has_retrain(self, config: Any) -> bool:
        return True

    def planned_workload(self, run: Any) -> Any:
        """Sizes for the resource plan without loading the data: the generator's for generated data,
        the published benchmark's otherwise (200 authors x 20 QA; forget01/05/10 = 2/10/20 authors),
        with TOFU_MEAN_TOKENS per QA (capped at unlearn.max_length)."""
        from ..data.generators.tofu import TofuGeneratorConfig
        from ..training.resource_plan import TOFU_MEAN_TOKENS, Workload

        source = run.data.source
        generator = source.generator if source.kind == "generated" else TofuGeneratorConfig.preset("tofu")
        forget = generator.forget_authors(run.data.forget_split) * generator.questions_per_author
        full = generator.n_authors * generator.questions_per_author
        questions = (
            forget + generator.retain_perturbed_size + generator.n_real_authors + generator.n_world_facts
        )
        return Workload(forget, full - forget, min(TOFU_MEAN_TOKENS, run.unlearn.max_length), questions)

    def released_model(self, config: Any, role: str) -> str | None:
        """`data.original_model` / `data.retrain_model`: released models used as they are."""
        return released_model(config, "Original" if role == "original" else "Retrain")

    def cache_key_parts(self, config: Any, part: str) -> tuple[Any, ...]:
        original, retrain = released_models(config)
        if part == "original" and original:  # the release and the tokenizer saved with it
            return ("released", original, config.model)
        if part == "retrain" and retrain:
            return ("released", retrain)
        if part == "original":
            return (
                config.data.source,
                config.model,
                config.prepare,
                str(config.data.train_on_utility_splits),
                str(config.seed),
            )
        if part == "retrain":
            return (config.data.forget_split,)
        return (config.data.forget_split,)
