"""The workspace: what every run of a sweep shares in memory, built once (`workspace`) and handed
to the trials as it is (`Workspace.for_run`): the benchmark's data, the tokenizer and prompt format,
and the encoded examples Original, Retrain and unlearning train on (`training_examples`) and the
reference NLLs are computed on (`reference_examples`).

It also holds what every other recipe needs of a run whatever its stage: the device it runs on
(`resolve_device`), the starting model (`initial_model`), and loading and saving a model folder
(`load_prepared_model`, `save_model`). It imports no other recipe: prepare, evaluate and unlearn
build on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..benchmarks.base import Benchmark, TrainingKind
from ..benchmarks.registry import benchmark
from ..config.base import content_hash
from ..config.run import RunSettings
from ..data.formatting import EncodedExample, PromptFormat, QAEncoder, encode_qa
from ..errors import UserInputError
from ..models import LoadedModel, load_model_and_tokenizer, write_prompt_format

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """The default `Log` of the recipes: a notebook or a worker that asks for no progress lines."""


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


def resolve_device(config: RunSettings) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("device: cuda was asked for but no GPU is visible; allowed: auto, cpu")
        return torch.device("cuda")
    return torch.device("cpu")


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


def reference_examples(ws: Workspace) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """The forget answers and the forget questions' refusals, in forget order: what the
    reference NLLs of NPO and IdkDPO are computed on."""
    length = ws.config.unlearn.max_length
    if ("reference", length) not in ws.encoded:
        forget, refusals = ws.benchmark.reference_examples(ws, length)
        ws.encoded[("reference", length)], ws.encoded[("refusal", length)] = forget, refusals
    return ws.encoded[("reference", length)], ws.encoded[("refusal", length)]
