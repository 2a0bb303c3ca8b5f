"""Frozen pydantic configs, YAML loading and `--set key=value` overrides.

Every validation problem becomes one `UserInputError` line naming the file, the field and what is
allowed, so the command-line tools can exit 2 before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python

from ..benchmarks import tofu
from ..benchmarks.muse import MuseSettings
from ..benchmarks.wmdp import WmdpSettings
from ..cache import default_cache_dir
from ..data.sources import TofuSource
from ..errors import UserInputError
from ..methods import METHODS, AnyMethodParams, SimNPOParams
from ..models import TinyModelConfig

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


class Frozen(BaseModel):
    """The base of every config: immutable, unknown keys refused, and every float finite (`.inf` or
    `.nan` as a learning rate, β or range bound would only surface as a diverged or crashed trial).
    The pydantic models that config sections reuse from other modules (methods, models, benchmarks,
    data sources) set the same `allow_inf_nan=False`; tests/config/test_validation.py checks every float."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


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


class TrainSettings(Frozen):
    """Optimisation of one training run (fine-tuning or unlearning): AdamW, one warm-up epoch then
    linear decay (the paper's schedule, appendix C.1), gradient clipping."""

    epochs: int = Field(5, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping bound; None: not clipped")
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
    noise_ceiling: bool = Field(
        False,
        description="fine-tune a second Retrain (seed + 1) and report its forget quality against Retrain: "
        "what a perfect unlearner gets (`forget_quality_noise_ceiling` of the Retrain row)",
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


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first given on line {first_line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (YAML's own rule is
    that the last one wins, which silently drops the first value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # `<<:` merge keys may be overridden; explicit keys may not repeat
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserInputError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from None
    try:
        data = parse_yaml(text)
    except DuplicateKeyError as exc:
        raise UserInputError(f"{path}: {exc}; give each setting once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserInputError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of settings at the top level")
    return data


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a field's type: Annotated and Optional unwrapped, unions split."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


Step = tuple[str, Any]  # a key of a nested section, and the section's default (JSON) when it is missing


def _setting_path(annotation: Any, parts: list[str], data: Any) -> list[Step] | None:
    """The dotted parts of a `--set` key grouped into the keys of the nested sections, following the
    config's types and the `data` at hand: a mapping's key may itself hold dots
    (`search.space.simnpo.method.beta.low` is search / space / simnpo / method.beta / low). In a
    mapping, a key the data already has wins, else the shortest key whose remainder is a setting of
    the mapping's values. Each step carries the default of a missing section (the sweep's default
    `run.prepare`, the default method with its name), so that a setting inside it changes only
    itself. None when the types do not lead there (validation then names the unknown part)."""
    if not parts:
        return []
    here = data if isinstance(data, dict | list) else None
    partial: list[Step] | None = None  # a known setting whose remainder leads nowhere
    for member in _members(annotation):
        origin = get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get(parts[0])
            if field is None:
                continue
            child = here.get(parts[0]) if isinstance(here, dict) else None
            rest = _setting_path(field.annotation, parts[1:], child)
            default = field.get_default(call_default_factory=True) if len(parts) > 1 else None
            step = (parts[0], None if default is None else to_jsonable_python(default))
            if rest is not None:
                return [step, *rest]
            partial = partial or [step, *((p, None) for p in parts[1:])]
        elif origin is dict:
            value_type = get_args(member)[1] if get_args(member) else Any
            widths = range(1, len(parts) + 1)
            existing = [w for w in widths if isinstance(here, dict) and ".".join(parts[:w]) in here]
            for width in [*reversed(existing), *widths]:
                key = ".".join(parts[:width])
                child = here.get(key) if isinstance(here, dict) else None
                rest = _setting_path(value_type, parts[width:], child)
                if rest is not None or width in existing:
                    return [(key, None), *(rest if rest is not None else [(p, None) for p in parts[width:]])]
        elif origin is list and parts[0].isdigit():
            index = int(parts[0])
            child = here[index] if isinstance(here, list) and index < len(here) else None
            rest = _setting_path(get_args(member)[0] if get_args(member) else Any, parts[1:], child)
            if rest is not None:
                return [(parts[0], None), *rest]
    return partial


def _guess_path(node: Any, parts: list[str]) -> list[str]:
    """Without types: the longest run of parts that names an existing key, else one part."""
    path: list[str] = []
    while parts:
        width = 1
        if isinstance(node, dict):
            width = next((w for w in range(len(parts), 0, -1) if ".".join(parts[:w]) in node), 1)
        path.append(".".join(parts[:width]))
        node = node.get(path[-1]) if isinstance(node, dict) else None
        parts = parts[width:]
    return path


def apply_overrides(
    data: Mapping[str, Any],
    overrides: Iterable[str],
    model: type[BaseModel] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (numbers, lists, mappings, null).

    With `model` (the config type of `data`) a dotted key follows the config's sections, so keys that
    themselves hold dots (the search space's `method.beta`) are found whether or not `data` has them:
    `search.space.simnpo.method.beta={low: 2, high: 3}` sets `space["simnpo"]["method.beta"]`, and a
    number indexes a list (`search.objectives.0.mode=min`). `labels` names where an override came
    from in errors (default `--set KEY=VALUE`).
    """
    return _apply_overrides(data, overrides, model, labels)[0]


def _apply_overrides(
    data: Mapping[str, Any],
    overrides: Iterable[str],
    model: type[BaseModel] | None = None,
    labels: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[tuple[list[str], str]]]:
    """The overridden data, and each override's path with the name of where it came from."""
    result = json.loads(json.dumps(data))
    touched: list[tuple[list[str], str]] = []
    for item in overrides:
        label = (labels or {}).get(item, f"--set {item}")
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not key or any(not part for part in parts):
            raise UserInputError(f"--set {item!r}: expected key=value, e.g. method.beta=2.5")
        try:
            value = parse_yaml(raw)
        except DuplicateKeyError as exc:
            raise UserInputError(f"{label}: {str(exc).split(': ', 1)[1]}") from None
        except yaml.YAMLError:
            value = raw
        steps = _setting_path(model, parts, result) if model is not None else None
        if steps is None:
            steps = [(name, None) for name in _guess_path(result, parts)]
        path = [name for name, _ in steps]
        node: Any = result
        for depth, (name, default) in enumerate(steps):
            walked = ".".join(path[: depth + 1])
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not name.isdigit() or int(name) >= len(node):
                    raise UserInputError(
                        f"{label}: {'.'.join(path[:depth])} is a list of {len(node)}; "
                        f"give an index from 0 to {len(node) - 1}, or the whole list"
                    )
                if last:
                    node[int(name)] = value
                    break
                child = node[int(name)]
            else:
                if last:
                    node[name] = value
                    break
                child = node.get(name)
                if child is None:
                    child = node[name] = json.loads(json.dumps(default)) if default is not None else {}
            if not isinstance(child, dict | list):
                raise UserInputError(
                    f"--set {item!r}: {walked} is a value, not a section; set it directly ({walked}=...)"
                )
            node = child
        touched.append((path, label))
    return result, touched


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(
    model: type[ModelT],
    data: Mapping[str, Any],
    source: str,
    overrides: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> ModelT:
    """`data` (read from `source`) with `overrides` applied, validated as `model`. An error names
    the override that set the bad value (`--set k=v`, or its label: a flag or environment variable),
    else `source`."""
    merged, touched = _apply_overrides(data, overrides, model, labels)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        at = _error_path(exc)
        culprit = next((label for path, label in reversed(touched) if at and _overlaps(path, at)), source)
        raise UserInputError(f"{culprit}: {describe_validation_error(exc)}") from None


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


def _error_path(exc: ValidationError) -> list[str]:
    """The setting the first error is about: its location, else the dotted path its message starts
    with (the sweep's own checks name the setting in the message)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    if not loc:
        named = re.match(r"(?:Value error, )?([A-Za-z_][\w-]*(?:\.[\w-]+)*):", first["msg"])
        loc = [named.group(1)] if named else []
    return ".".join(loc).split(".") if loc else []


def _overlaps(path: list[str], at: list[str]) -> bool:
    """Whether an override at `path` set (part of) the value at `at`: one runs along the other
    (an error location may hold extra parts, such as the method's tag in run.method.simnpo.beta)."""

    def along(short: list[str], long: list[str]) -> bool:
        found = iter(long)
        return bool(short) and short[0] == long[0] and all(part in found for part in short)

    flat = ".".join(path).split(".")
    return along(flat, at) or along(at, flat)


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
    return validate(RunConfig, run, str(path), overrides, labels)


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

    @field_validator("choices", mode="before")
    @classmethod
    def _finite_choices(cls, choices: Any) -> Any:
        # One line for a non-finite choice (the union of choice types would report it four times).
        for i, choice in enumerate(choices if isinstance(choices, list) else []):
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"choices[{i}] is {choice}; every choice must be a finite number or a word")
        return choices

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
        if self.integer:
            # Optuna's suggest_int takes whole bounds; 8.5 would be cut to 8 without a word.
            for end, value in (("low", self.low), ("high", self.high)):
                if value != int(value):
                    raise ValueError(f"an integer range needs whole-number bounds ({end}: {value})")
            if self.log and self.low < 1:
                raise ValueError(f"an integer log range needs low >= 1 (got {self.low:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self

    def searched_values(self) -> list[tuple[str, Any]]:
        """Values the sampler can propose, for validation: every choice; a range's two ends, and for
        a float range one value inside, so that a float range over a whole-number setting (epochs
        without `integer: true`) is caught. The settings' bounds are intervals, so the ends decide."""
        if self.choices is not None:
            return [(f"choices[{i}]", choice) for i, choice in enumerate(self.choices)]
        assert self.low is not None and self.high is not None
        if self.integer:
            return [("low", int(self.low)), ("high", int(self.high))]
        values: list[tuple[str, Any]] = [("low", self.low), ("high", self.high)]
        if self.low < self.high:
            inside = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
            if inside == int(inside):  # a whole number would not reveal an integer setting
                inside = self.low + (self.high - self.low) * 0.382
            values.append(("a value inside the range", inside))
        return values


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
    num_trials: int = Field(
        8,
        gt=0,
        le=10_000,
        description="at most 10000: beyond that a sweep is a typo (TPE/NSGA-II slow down with every "
        "trial in the study, and each trial trains a model); split a larger study into sweeps",
    )
    early_stop: EarlyStopSettings | None = Field(
        None, description="stop trials dominated by the front early (None: every trial runs its epochs)"
    )
    max_concurrent_trials: int | None = Field(None, gt=0, description="None: as many as the resources allow")
    time_budget_minutes: float | None = Field(
        None,
        gt=0,
        description="stop starting trials after this many minutes of trials (running ones are stopped "
        "and their finished epochs kept); None: run num_trials",
    )
    seed: int = 0

    def resolved_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "nsga2" if len(self.objectives) > 1 and self.num_trials >= 100 else "tpe"


class TrialResources(Frozen):
    workers: int = Field(1, gt=0, description="FSDP workers per trial (TorchTrainer when > 1 or GPUs)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="memory of one GPU for the resource plan (None: the visible GPUs', else 80)"
    )
    cluster_gpus: int | None = Field(
        None,
        gt=0,
        description="GPUs of the cluster for the resource plan (None: the visible ones, else one trial's)",
    )
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


def check_objectives(objectives: list[Objective], benchmark_name: str) -> None:
    """Each objective names a metric the benchmark reports (`Benchmark.metrics`, all in
    `metrics.METRICS`) with the mode of that metric's direction; else one ValueError naming
    `search.objectives[i].metric` or `.mode` and what is allowed."""
    from ..benchmarks.registry import BENCHMARKS
    from ..maths.metrics import METRICS

    bench = BENCHMARKS[benchmark_name]
    for i, objective in enumerate(objectives):
        metric = objective.metric
        if metric not in bench.metrics or metric not in METRICS:
            raise ValueError(
                f"search.objectives[{i}].metric: {metric!r} is not a metric of benchmark {bench.name}; "
                f"allowed: {', '.join(bench.metrics)}"
            )
        direction = METRICS[metric].direction
        if direction == "zero":
            usable = [m for m in bench.metrics if METRICS[m].direction != "zero"]
            raise ValueError(
                f"search.objectives[{i}].mode: {metric} is best closest to 0, which neither max nor min "
                f"expresses; allowed metrics of benchmark {bench.name}: {', '.join(usable)}"
            )
        if objective.mode != direction:
            raise ValueError(
                f"search.objectives[{i}].mode: {objective.mode!r} contradicts {metric}, where "
                f"{'higher' if direction == 'max' else 'lower'} is better; allowed: {direction}"
            )


_SECRET_WORDS = ("key", "token", "password", "secret")


class TrackingSettings(Frozen):
    """Experiment tracking of the trials (raysimnpo.orchestration.tracking), through Ray Tune's own
    logger callbacks. Secrets never go in a sweep file: W&B reads WANDB_API_KEY, MLflow
    MLFLOW_TRACKING_TOKEN (or _USERNAME / _PASSWORD) from the environment."""

    kind: Literal["none", "mlflow", "wandb"] = "none"
    tracking_uri: str | None = Field(
        None,
        description="mlflow: a tracking server URL or a local store (default: sqlite:///<run>/mlflow.db)",
    )
    experiment: str | None = Field(
        None, description="mlflow experiment / wandb project (default: the sweep name)"
    )
    mode: Literal["online", "offline"] = Field(
        "online", description="wandb: offline writes each trial's run under <run>/wandb, for `wandb sync`"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="tags set on every trial's run")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field in data:
                if any(word in str(field).lower() for word in _SECRET_WORDS):
                    raise ValueError(
                        f"tracking.{field}: secrets are read from the environment only "
                        "(WANDB_API_KEY; MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)"
                    )
        return data


class SweepConfig(Frozen):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=100,
        description="the run folder's name (and the Optuna study's): at most 100 characters, so that "
        "Tune's trial folders under it stay within the filesystem's 255-byte name limit",
    )
    storage: str = Field("runs", description="a local folder or a pyarrow filesystem URI (s3://, gs://)")
    run: RunConfig = RunConfig()
    search: SearchSettings = SearchSettings()
    resources: TrialResources = TrialResources()
    fault_tolerance: FaultTolerance = FaultTolerance()
    relearn: RelearnSettings | None = Field(None, description="relearning attacks after the sweep (Fig. A3)")
    tracking: TrackingSettings = TrackingSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_objectives(cls, data: Any) -> Any:
        """Without `search.objectives`, the benchmark's default objectives (directions from METRICS)."""
        if not isinstance(data, dict):
            return data
        search, run = data.get("search"), data.get("run")
        if isinstance(search, dict) and "objectives" in search:
            return data
        if isinstance(search, SearchSettings) and "objectives" in search.model_fields_set:
            return data
        name = run.get("benchmark") if isinstance(run, dict) else getattr(run, "benchmark", None)
        from ..benchmarks.registry import BENCHMARKS

        bench = BENCHMARKS.get(str(name or RunConfig.model_fields["benchmark"].default))
        if bench is None or not isinstance(search, dict | None):
            return data  # an unknown benchmark or a malformed search: the field validation reports it
        from ..benchmarks.base import objectives

        defaults = [{"metric": m, "mode": d} for m, d in objectives(bench)]
        return dict(data, search=dict(search or {}, objectives=defaults))

    @model_validator(mode="after")
    def _check_search(self) -> SweepConfig:
        unknown = [m for m in self.search.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"search.methods: unknown {unknown}; allowed: {', '.join(METHODS)}")
        if self.relearn is not None and self.relearn.methods is not None:
            unknown = [m for m in self.relearn.methods if m not in self.search.methods]
            if unknown:
                raise ValueError(f"relearn.methods: {unknown} not in search.methods {self.search.methods}")
        from ..benchmarks.registry import BENCHMARKS

        bench = BENCHMARKS[self.run.benchmark]
        if self.relearn is not None and not bench.relearning:
            raise ValueError(
                f"relearn: attacks are scored with TOFU forget quality; benchmark {self.run.benchmark} has none"
            )
        unsupported = [m for m in self.search.methods if m not in bench.methods]
        if unsupported:
            raise ValueError(
                f"search.methods: {unsupported} cannot run on benchmark {bench.name}; "
                f"allowed: {', '.join(bench.methods)}"
            )
        check_objectives(self.search.objectives, self.run.benchmark)
        if self.run.device == "cuda" and self.resources.gpus_per_worker == 0:
            raise ValueError(
                "run.device: cuda needs resources.gpus_per_worker > 0 (a trial sees a GPU only when it "
                "asks Ray for one); or use auto or cpu"
            )
        if self.run.evaluation.noise_ceiling and "forget_quality" not in bench.metrics:
            raise ValueError(
                f"run.evaluation.noise_ceiling: benchmark {bench.name} has no forget_quality; allowed: false"
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
                where = f"search.space.{method}.{key}"
                if not (key.startswith("method.") or key.split(".")[0] in base):
                    raise ValueError(f"{where}: not a run setting")
                # Every value the search can produce goes through the models each trial uses.
                for label, value in rng.searched_values():
                    try:
                        self.trial_run_config({"method": method, method: {key: value}})
                    except ValidationError as exc:
                        reason = describe_validation_error(exc)
                        if exc.errors()[0]["type"] == "int_from_float":
                            reason += "; a whole-number setting needs integer: true"
                        raise ValueError(f"{where}: {label} {value!r} is refused: {reason}") from None
                    except UserInputError as exc:  # the key walks into a value
                        raise ValueError(
                            f"{where}: not a run setting ({str(exc).split(': ', 1)[1]})"
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
        return RunConfig.model_validate(apply_overrides(data, overrides, RunConfig))


def load_sweep_config(
    name_or_path: str, overrides: Iterable[str] = (), labels: Mapping[str, str] | None = None
) -> SweepConfig:
    """A sweep file with `--set` overrides applied; `labels` names overrides that came from a flag
    or an environment variable (e.g. `storage=...` from RAYSIMNPO_STORAGE) in error messages."""
    path = sweep_file(name_or_path)
    return validate(SweepConfig, load_yaml(path), str(path), overrides, labels)
