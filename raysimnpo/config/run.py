"""One unlearning run's config (`RunSettings`, the `run:` section of a sweep file): model, data,
preparing, unlearning and evaluation settings, assembled from the benchmarks' and methods' own
settings on top of `config.base`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..benchmarks import tofu
from ..benchmarks.muse import MuseSettings
from ..benchmarks.wmdp import WmdpSettings
from ..cache import default_cache_dir
from ..data.sources import TofuSource
from ..errors import UserInputError
from ..methods import AnyMethodParams, SimNPOParams
from ..models import TinyModelConfig
from .base import EvalSettings, Frozen, Seed, TrainSettings, load_yaml, sweep_file, validate


class ModelSettings(Frozen):
    name: str = Field("tiny", description="a preset (tiny, smollm2-135m), a hub id or a local HF folder")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    tiny: TinyModelConfig = TinyModelConfig()


class DataSettings(Frozen):
    source: TofuSource = TofuSource(kind="generated")
    forget_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    train_on_utility_splits: bool = Field(
        False,
        description="add real_authors/world_facts QA to the fine-tuning data of Original and Retrain; "
        "a model trained from scratch has no pretraining that would know them",
    )
    original_model: str | None = Field(
        None,
        description="a released Original (hub id or local HF folder, e.g. open-unlearning/"
        "tofu_Llama-2-7b-chat-hf_full) used as it is instead of fine-tuning; needs retrain_model",
    )
    retrain_model: str | None = Field(
        None, description="the released Retrain of the forget split (e.g. ..._retain90 for forget10)"
    )

    @field_validator("original_model", "retrain_model")
    @classmethod
    def _released_model_form(cls, value: str | None) -> str | None:
        return None if value is None else tofu.check_released_model(value)

    @model_validator(mode="after")
    def _released_models_pair(self) -> DataSettings:
        tofu.check_released_pair(self.original_model, self.retrain_model, self.forget_split)
        return self


class RunSettings(Frozen):
    """One unlearning run: what to prepare, which method, how to evaluate."""

    benchmark: Literal["tofu", "muse", "wmdp"] = "tofu"
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str = Field(default_factory=lambda: str(default_cache_dir()))
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    prepare: TrainSettings = TrainSettings(epochs=5, learning_rate=1e-5, batch_size=32)
    unlearn: TrainSettings = TrainSettings(epochs=10, learning_rate=1e-5, batch_size=32)
    method: AnyMethodParams = SimNPOParams()
    evaluation: EvalSettings = EvalSettings()
    muse: MuseSettings = Field(MuseSettings(), description="data and metrics of benchmark: muse")
    wmdp: WmdpSettings = Field(WmdpSettings(), description="data and metrics of benchmark: wmdp")

    @model_validator(mode="after")
    def _noise_ceiling_possible(self) -> RunSettings:
        """The noise ceiling is the forget quality of a second Retrain, fine-tuned from seed + 1: the
        benchmark needs forget quality and a Retrain this run fine-tunes (a released one has one seed)."""
        if not self.evaluation.noise_ceiling:
            return self
        from ..benchmarks.registry import BENCHMARKS

        bench = BENCHMARKS[self.benchmark]
        if "forget_quality" not in bench.metrics:
            raise ValueError(
                f"evaluation.noise_ceiling: benchmark {bench.name} has no forget_quality; allowed: false"
            )
        released = bench.released_model(self, "retrain")
        if released is not None:
            raise ValueError(
                f"evaluation.noise_ceiling: needs a Retrain fine-tuned here, to fine-tune again from seed + 1; "
                f"the Retrain is the released {released!r}; allowed: false"
            )
        return self


RunConfig = RunSettings
"""The former name, kept so that existing imports work; Ray Train and Tune have a `RunConfig` of their own."""


def load_run_config(
    name_or_path: str, overrides: Iterable[str] = (), method: str | None = None
) -> RunSettings:
    """The `run:` section of a sweep file, with `--method` and `--set` applied."""
    path = sweep_file(name_or_path)
    data = load_yaml(path)
    from ..benchmarks.registry import BENCHMARKS

    runnable = [name for name, b in BENCHMARKS.items() if not b.own_sweep]
    top = data.get("benchmark")
    if top is not None and (top not in BENCHMARKS or BENCHMARKS[top].own_sweep):
        raise UserInputError(
            f"{path}: benchmark {top!r} runs as a sweep (python -m raysimnpo.sweep); "
            f"python -m raysimnpo.run takes: {', '.join(runnable)} (the run: benchmark of a sweep file)"
        )
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise UserInputError(f"{path}: run: expected a mapping of run settings, got {type(run).__name__}")
    run = dict(run)
    overrides = list(overrides)
    if method is not None:
        overrides.insert(0, f"method={json.dumps({'name': method})}")
    labels = {f"method={json.dumps({'name': method})}": f"--method {method}"} if method is not None else {}
    return validate(RunSettings, run, str(path), overrides, labels)
