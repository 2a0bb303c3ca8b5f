"""The bottom of the configs: `Frozen` (the base of every config model, here and in the modules whose
settings a config section reuses), YAML loading with duplicate keys refused, `--set key=value`
overrides, validation errors as one `UserInputError` line, and the settings of one training run
and of one evaluation (`TrainSettings`, `EvalSettings`), which the training loop and the benchmarks
read. Imports nothing of raysimnpo but
`errors`, so any layer may use it."""

from __future__ import annotations

import hashlib
import json
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from ..errors import UserInputError

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


class Frozen(BaseModel):
    """The base of every config: immutable, unknown keys refused, and every float finite (`.inf` or
    `.nan` as a learning rate, β or range bound would only surface as a diverged or crashed trial).
    The pydantic models that config sections reuse from other modules (methods, models, benchmarks,
    data sources and generators) subclass it too; tests/config/test_validation.py checks every float."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _each_once(values: list[Any]) -> list[Any]:
    repeated = list(dict.fromkeys(v for v in values if values.count(v) > 1))
    if repeated:
        raise ValueError(f"{', '.join(map(str, repeated))} given more than once; give each once")
    return values


Distinct = AfterValidator(_each_once)
"""A list setting whose items are things to run or count once (methods, relearning seeds): a repeat
would run twice and weigh twice in a mean. `Annotated[list[str], Distinct]`."""


MAX_SEED = 2**32 - 1
Seed = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_SEED,
        description="a whole number 0 to 2**32 - 1 (what numpy's and Optuna's generators take)",
    ),
]
"""Every seed of a config: outside this range numpy's and Optuna's generators refuse it in the middle of
a run (tests/config/test_validation.py checks every seed setting)."""


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
            # a required section has no default to start from (the Markov study's experiments)
            default = (
                field.get_default(call_default_factory=True)
                if len(parts) > 1 and not field.is_required()
                else None
            )
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
    loc, msg = _located(first)
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{'.'.join(loc)}: {msg}{shown}{more}" if loc else f"{msg}{more}"


def _error_path(exc: ValidationError) -> list[str]:
    """The setting the first error is about (the sweep's own checks name the setting in the message)."""
    return _located(exc.errors()[0])[0]


# A section's own check names the setting first, as a dotted path from that section or its parent:
# "evaluation.noise_ceiling: ..." (RunSettings), "data.retrain_model: ..." (DataSettings).
_NAMED_SETTING = re.compile(r"([A-Za-z_][\w-]*(?:\.[\w-]+)*): ")


def _located(error: Any) -> tuple[list[str], str]:
    """An error's setting as path parts and its message: the location pydantic gives, joined with
    the dotted path the message starts with, where their ends overlap counted once (run.data +
    data.retrain_model: run.data.retrain_model)."""
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    parts = loc.split(".") if loc else []
    msg = error["msg"].removeprefix("Value error, ")
    named = _NAMED_SETTING.match(msg)
    if named is None or (parts and "." not in named.group(1)):  # "relearn: ..." only at the top
        return parts, msg
    path = named.group(1).split(".")
    overlap = max((k for k in range(1, min(len(parts), len(path)) + 1) if parts[-k:] == path[:k]), default=0)
    return parts + path[overlap:], msg[named.end() :]


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
