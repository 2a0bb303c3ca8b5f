"""The `Benchmark` protocol: everything that differs between TOFU, MUSE, WMDP and the Markov study.

The recipe, the trial, the sweep driver and the result writers ask the benchmark of a run
(`BENCHMARKS[config.benchmark]`, `raysimnpo.benchmarks.registry`) instead of branching on its name:

* data: `load` (every row a run needs), `training_examples` (what Original, Retrain and the forget /
  retain terms of unlearning train on), `reference_examples` (what ℓ_ref of NPO / IdkDPO is scored on),
  `check_encoding` (the encoding mistakes to report before anything is trained);
* evaluation, in three steps so that the same code runs in the trial and in Ray Data actors:
  `evaluation_items` (one JSON-able row per question / text), `score_items` (per-example statistics of
  some items with a model: what an actor computes on a batch) and `aggregate` (the metric values from
  all per-example rows, against the Retrain reference); `evaluate` chains them in-process;
* the Retrain reference (`retrain_reference`: what of Retrain's evaluation the other models are
  measured against) and whether there is a Retrain at all (`has_retrain`);
* `headline_metrics`, `metrics` (every metric `aggregate` reports, each named in `metrics.METRICS`)
  and `default_objectives`, whose directions come from `METRICS` (`objectives`);
* the cache-key parts of prepared models and of their stored evaluation (`cache_key_parts`);
* released models used as they are instead of being fine-tuned (`released_model`);
* which methods it can run (`methods`, `check_method`) and whether relearning attacks apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import UserInputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..data.formatting import EncodedExample

Role = Literal["original", "retrain"]
TrainingKind = Literal["original", "retrain", "forget", "retain"]
KeyPart = Literal["original", "retrain", "evaluation"]


def all_methods() -> tuple[str, ...]:
    """Every registered method (`methods.METHODS`), read when asked so a newly added one is included."""
    from ..methods import METHODS

    return tuple(METHODS)


def raw_text_methods() -> tuple[str, ...]:
    """The methods of a raw-text benchmark: not those that need QA refusals (`idk` in their needs)."""
    from ..methods import METHODS

    return tuple(name for name, method in METHODS.items() if "idk" not in method.needs)


class RawTextBenchmark:
    """What the raw-text benchmarks (MUSE, WMDP) share: their data object holds the text chunks that
    train Original, Retrain and the forget / retain terms, and they have no questions to refuse, so
    the methods that need refusals (`idk` in their needs) cannot run on them."""

    name: str
    training_unit = "text chunks"

    @property
    def methods(self) -> tuple[str, ...]:
        return raw_text_methods()

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise UserInputError(
                f"method: {method} replaces QA answers by refusals and needs a QA benchmark; "
                f"{self.name.upper()} unlearns raw text; allowed: {', '.join(self.methods)}"
            )

    def corpus(self, data: Any) -> list[str]:
        return list(data.corpus())

    def training_examples(self, ws: Any, kind: str, max_length: int) -> list[Any]:
        return list(ws.data.training_examples(kind, ws.tokenizer, max_length))

    def reference_examples(self, ws: Any, max_length: int) -> tuple[list[Any], list[Any]]:
        """Raw text has no questions to refuse (the IDK methods are refused)."""
        return self.training_examples(ws, "forget", max_length), []

    def check_encoding(self, ws: Any) -> None:
        if not self.training_examples(ws, "forget", ws.config.unlearn.max_length):
            raise UserInputError(f"{self.name}: the forget corpus of {ws.data.source_name} has no tokens")

    def forget_description(self, data: Any) -> str:
        return f"{data.forget_count} forget texts"


@dataclass
class Evaluation:
    """One evaluated model: its metric values and its per-example rows (each with `split`, `index`)."""

    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)


class Benchmark(Protocol):
    name: str
    headline_metrics: tuple[str, ...]
    """The metrics a user reads first (printed after prepare and in the sweep's front)."""
    metrics: tuple[str, ...]
    """Every metric `aggregate` reports that an objective may name."""
    default_objectives: tuple[str, ...]
    """The metrics a sweep optimises by default; their directions are `metrics.METRICS`'."""
    methods: tuple[str, ...]
    """The unlearning methods this benchmark can run."""
    relearning: bool
    """Whether relearning attacks (scored with this benchmark's forget quality) apply."""
    own_sweep: bool
    """True: runs only as a sweep of its own kind (a top-level `benchmark:` in the sweep file, like
    sweeps/markov.yaml), not as the `run:` of an unlearning sweep or `python -m raysimnpo.run`."""
    training_unit: str
    """What one training example is, for log lines: "QA", "text chunks", "sequences"."""

    def check_method(self, method: str) -> None: ...

    def load(self, config: Any) -> Any:
        """Every row one run needs (the run's data object)."""
        ...

    def training_examples(self, ws: Any, kind: TrainingKind, max_length: int) -> list[EncodedExample]: ...

    def reference_examples(
        self, ws: Any, max_length: int
    ) -> tuple[list[EncodedExample], list[EncodedExample]]:
        """The forget answers and the forget questions' refusals (empty without questions)."""
        ...

    def check_encoding(self, ws: Any) -> None:
        """Encode what training will encode; a prompt with no target tokens is a UserInputError."""
        ...

    def forget_description(self, data: Any) -> str: ...

    def corpus(self, data: Any) -> list[str]:
        """The texts a tokenizer trained for this run should cover."""
        ...

    def evaluation_items(self, ws: Any) -> list[dict[str, Any]]: ...

    def score_items(
        self, model: PreTrainedModel, ws: Any, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]: ...

    def aggregate(self, ws: Any, examples: list[dict[str, Any]], reference: Any) -> Evaluation: ...

    def retrain_reference(self, retrain: Evaluation | None) -> Any:
        """What of Retrain's evaluation the others are measured against (JSON-able), None for none."""
        ...

    def planned_workload(self, run: Any) -> Any:
        """Forget / retain sizes for `resource_plan` without loading the data, or None."""
        ...

    def has_retrain(self, config: Any) -> bool: ...

    def released_model(self, config: Any, role: Role) -> str | None: ...

    def cache_key_parts(self, config: Any, part: KeyPart) -> tuple[Any, ...]: ...


def objectives(benchmark: Benchmark) -> tuple[tuple[str, str], ...]:
    """The benchmark's default objectives as (metric, direction) with directions from `METRICS`."""
    from ..maths.metrics import metric_direction

    return tuple((m, metric_direction(m)) for m in benchmark.default_objectives)


def evaluate(benchmark: Benchmark, model: PreTrainedModel, ws: Any, reference: Any) -> Evaluation:
    """In-process evaluation: score every item with `model`, then aggregate."""
    items = benchmark.evaluation_items(ws)
    return benchmark.aggregate(ws, benchmark.score_items(model, ws, items), reference)


def refuse_method(benchmark: Benchmark, method: str, why: str) -> None:
    """A UserInputError when `benchmark` cannot run `method` (`why`: the reason, in a few words)."""
    if method not in benchmark.methods:
        raise UserInputError(f"method: {method} {why}; allowed: {', '.join(benchmark.methods)}")
