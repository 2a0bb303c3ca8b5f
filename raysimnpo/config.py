"""Frozen pydantic configs, YAML loading and `--set key=value` overrides.

Every validation problem becomes one `UserInputError` line naming the file, the field and what is
allowed, so the command-line tools can exit 2 before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .benchmarks.muse import MuseSettings
from .benchmarks.wmdp import WmdpSettings
from .cache import default_cache_dir
from .data.sources import TofuSource
from .errors import UserInputError
from .methods import METHODS, AnyMethodParams, SimNPOParams
from .models import TinyModelConfig

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class TrainSettings(Frozen):
    """Optimisation of one training run (fine-tuning or unlearning): AdamW, one warm-up epoch then
    linear decay (the paper's schedule, appendix C.1), gradient clipping."""

    epochs: int = Field(5, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(256, gt=8)
    max_forget_loss: float | None = Field(
        None,
        gt=0,
        description="divergence guard: stop the run (TrainingDiverged) when a step's forget term "
        "exceeds this in magnitude; None: only a NaN or infinite loss stops it",
    )


class EvalSettings(Frozen):
    batch_size: int = Field(32, gt=0)
    max_new_tokens: int = Field(200, gt=0, description="greedy generation length for ROUGE-L")
    generation_limit: int | None = Field(
        None, gt=0, description="generate for the first N questions of each split (None = all)"
    )
    every_epoch: bool = Field(
        False,
        description="evaluate after every unlearning epoch: each (trial, epoch) is a point of the front, of "
        "the Table-2 selection and of the search (metrics rows with stage `epoch`)",
    )
    engine: Literal["auto", "ray_data", "in_process"] = Field(
        "ray_data",
        description="sweeps: stream evaluation through Ray Data actors, or run it in the trial; auto: in the "
        "trial when it unlearned in its own process on CPU (model already in memory), else Ray Data",
    )


class RunConfig(Frozen):
    """One unlearning run: what to prepare, which method, how to evaluate."""

    benchmark: Literal["tofu", "muse", "wmdp"] = "tofu"
    seed: int = 0
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


def content_hash(*parts: BaseModel | Mapping[str, Any] | str) -> str:
    """A stable short hash of configs, for caching prepared models by what produced them."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserInputError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of settings at the top level")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (numbers, lists, null).

    Keys that themselves hold dots (the search space's `method.beta`) are matched as a whole:
    `search.space.simnpo.method.beta.low=2` reaches `space["simnpo"]["method.beta"]["low"]`.
    """
    result = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not key or any(not part for part in parts):
            raise UserInputError(f"--set {item!r}: expected key=value, e.g. method.beta=2.5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = result
        walked: list[str] = []
        while len(parts) > 1:
            # The longest run of parts that names an existing key, else the next part alone.
            width = next((w for w in range(len(parts) - 1, 0, -1) if ".".join(parts[:w]) in node), 1)
            name, parts = ".".join(parts[:width]), parts[width:]
            walked.append(name)
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            if not isinstance(child, dict):
                raise UserInputError(
                    f"--set {item!r}: {'.'.join(walked)} is a value, not a section; "
                    f"set it directly ({'.'.join(walked)}=...)"
                )
            node = child
        node[parts[0]] = value
    return result


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(model: type[ModelT], data: Mapping[str, Any], source: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserInputError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"


def sweep_file(name_or_path: str) -> Path:
    """A sweep name (`tofu`) resolves to sweeps/<name>.yaml; a path is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        return candidate
    for folder in (Path.cwd() / "sweeps", SWEEPS_DIR):
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
    raise UserInputError(f"unknown sweep or benchmark {name_or_path!r}; allowed: {', '.join(known)}")


def load_run_config(name_or_path: str, overrides: Iterable[str] = (), method: str | None = None) -> RunConfig:
    """The `run:` section of a sweep file, with `--method` and `--set` applied."""
    path = sweep_file(name_or_path)
    data = load_yaml(path)
    if data.get("benchmark", "tofu") != "tofu":
        raise UserInputError(
            f"{path}: benchmark {data['benchmark']!r} runs as a sweep (python -m raysimnpo.sweep); "
            "python -m raysimnpo.run takes: tofu, muse, wmdp (the run: benchmark of a sweep file)"
        )
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise UserInputError(f"{path}: run: expected a mapping of run settings, got {type(run).__name__}")
    run = dict(run)
    if method is not None:
        run["method"] = {"name": method}
    return validate(RunConfig, apply_overrides(run, overrides), str(path))


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------

SAMPLERS_MULTI_OBJECTIVE = ("tpe", "nsga2", "gp", "random")


class ParamRange(Frozen):
    """One searched hyperparameter: a float/int range (`low`, `high`, optional `log`) or `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[float | int | str | bool] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class Objective(Frozen):
    metric: str
    mode: Literal["max", "min"]


class EarlyStopSettings(Frozen):
    """Stop a trial whose per-epoch points are all dominated by other trials' points by a clear margin
    (`pareto.dominated_by_margin`; needs `run.evaluation.every_epoch`)."""

    rule: Literal["pareto_margin"] = "pareto_margin"
    margin: float = Field(
        0.2, ge=0, lt=1, description="lead in every objective, in rank percentiles of all epoch points"
    )
    min_epochs: int = Field(2, ge=1, description="epochs every trial runs before it can be stopped")


class SearchSettings(Frozen):
    methods: list[str] = Field(default_factory=lambda: ["simnpo"], min_length=1)
    space: dict[str, dict[str, ParamRange]] = Field(
        default_factory=dict, description="per method: dotted run setting -> range, e.g. method.beta"
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: [
            Objective(metric="forget_quality", mode="max"),
            Objective(metric="model_utility", mode="max"),
        ],
        min_length=1,
    )
    sampler: Literal["auto", "tpe", "nsga2", "gp", "random", "cmaes"] = Field(
        "auto",
        description="auto: multi-objective TPE below 100 trials, NSGA-II from 100 (it needs generations)",
    )
    num_trials: int = Field(8, gt=0)
    early_stop: EarlyStopSettings | None = Field(
        None, description="stop trials dominated by the front early (None: every trial runs its epochs)"
    )
    max_concurrent_trials: int | None = Field(None, gt=0, description="None: as many as the resources allow")
    seed: int = 0

    def resolved_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "nsga2" if len(self.objectives) > 1 and self.num_trials >= 100 else "tpe"


class TrialResources(Frozen):
    workers: int = Field(1, gt=0, description="FSDP workers per trial (TorchTrainer when > 1 or GPUs)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="extra Ray resources each trial asks for, e.g. {trial_worker: 1}: a custom resource "
        "that only one node type of a cluster has, so trials run on those nodes",
    )

    @model_validator(mode="after")
    def _check_custom(self) -> TrialResources:
        for key, amount in self.custom.items():
            if key in {"CPU", "GPU", "memory", "object_store_memory"} or key.lower() in {"cpu", "gpu"}:
                raise ValueError(f"resources.custom.{key}: use cpus_per_worker / gpus_per_worker for it")
            if amount <= 0:
                raise ValueError(f"resources.custom.{key}: {amount}; give an amount > 0")
        return self


class RelearnSettings(Frozen):
    """Relearning attacks on the best trial of each method after the sweep (paper appendix C.3):
    fine-tune on `fraction` of the forget set, the shortest answers and/or random draws."""

    attacks: list[Literal["shortest", "random"]] = Field(
        default_factory=lambda: ["shortest", "random"], min_length=1
    )
    fraction: float = Field(0.2, gt=0, le=1, description="share of the forget set relearned (paper: 20%)")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=1,
        description="random-relearn draws (paper: 5); shortest-relearn trains with the first",
    )
    epochs: int = Field(3, gt=0, description="relearning epochs; forget quality after each (paper: 3)")
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(4, gt=0)
    methods: list[str] | None = Field(
        None, description="methods whose selected trial is attacked (None: all)"
    )


class FaultTolerance(Frozen):
    """What a sweep survives: a dead worker process or node, and a dead trial process."""

    worker_restarts: int = Field(
        2,
        ge=0,
        description="restarts of a trial's TorchTrainer workers; > 0 saves a training state every epoch "
        "and restarted workers resume from the last one",
    )
    trial_retries: int = Field(
        1, ge=0, description="re-runs of a trial whose process died (a diverged trial is not re-run)"
    )


class SweepConfig(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = Field("runs", description="a local folder or a pyarrow filesystem URI (s3://, gs://)")
    run: RunConfig = RunConfig()
    search: SearchSettings = SearchSettings()
    resources: TrialResources = TrialResources()
    fault_tolerance: FaultTolerance = FaultTolerance()
    relearn: RelearnSettings | None = Field(None, description="relearning attacks after the sweep (Fig. A3)")

    @model_validator(mode="after")
    def _check_search(self) -> SweepConfig:
        unknown = [m for m in self.search.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"search.methods: unknown {unknown}; allowed: {', '.join(METHODS)}")
        if self.relearn is not None and self.relearn.methods is not None:
            unknown = [m for m in self.relearn.methods if m not in self.search.methods]
            if unknown:
                raise ValueError(f"relearn.methods: {unknown} not in search.methods {self.search.methods}")
        if self.relearn is not None and self.run.benchmark != "tofu":
            raise ValueError(
                f"relearn: attacks are scored with TOFU forget quality; benchmark {self.run.benchmark} has none"
            )
        if self.run.benchmark != "tofu" and {"idk_nll", "idk_dpo"} & set(self.search.methods):
            raise ValueError(
                f"search.methods: idk_nll / idk_dpo need QA pairs; benchmark {self.run.benchmark} unlearns raw text"
            )
        if self.search.early_stop is not None and not self.run.evaluation.every_epoch:
            raise ValueError(
                "search.early_stop: needs per-epoch points; set run.evaluation.every_epoch: true"
            )
        extra = [m for m in self.search.space if m not in self.search.methods]
        if extra:
            raise ValueError(f"search.space: {extra} not in search.methods {self.search.methods}")
        sampler = self.search.resolved_sampler()
        if len(self.search.objectives) > 1 and sampler not in SAMPLERS_MULTI_OBJECTIVE:
            raise ValueError(
                f"search.sampler: {sampler} does not support {len(self.search.objectives)} objectives; "
                f"allowed: {', '.join(SAMPLERS_MULTI_OBJECTIVE)}"
            )
        base = self.run.model_dump(mode="json")
        for method, space in self.search.space.items():
            for key, rng in space.items():
                if not (key.startswith("method.") or key.split(".")[0] in base):
                    raise ValueError(f"search.space.{method}.{key}: not a run setting")
                value = rng.choices[0] if rng.choices is not None else rng.low
                trial = apply_overrides(dict(base, method={"name": method}), [f"{key}={value}"])
                try:
                    RunConfig.model_validate(trial)
                except ValidationError as exc:
                    raise ValueError(
                        f"search.space.{method}.{key}: {describe_validation_error(exc)}"
                    ) from None
        return self

    def trial_run_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The run of one trial: the base run with the sampled `method` and its dotted settings
        (`{"method": "simnpo", "simnpo": {"method.beta": 2.5, ...}}`, as the search space names them)."""
        method = params["method"]
        data = self.run.model_dump(mode="json")
        if data["method"]["name"] != method:
            data["method"] = {"name": method}
        overrides = [f"{k}={json.dumps(v)}" for k, v in (params.get(method) or {}).items()]
        return RunConfig.model_validate(apply_overrides(data, overrides))


def load_sweep_config(name_or_path: str, overrides: Iterable[str] = ()) -> SweepConfig:
    path = sweep_file(name_or_path)
    return validate(SweepConfig, apply_overrides(load_yaml(path), overrides), str(path))
