"""A sweep's config (`SweepConfig`): the search space and objectives, resources, relearning attacks,
fault tolerance and tracking, around a `run:` section (`config.run`)."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import UserInputError
from ..methods import METHODS
from .base import (
    MAX_SEED,
    Distinct,
    Frozen,
    Seed,
    apply_overrides,
    describe_validation_error,
    load_yaml,
    sweep_file,
    validate,
)
from .run import RunSettings

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

    def largest(self) -> float:
        """The largest value the sampler can propose (a numeric setting's range or choices)."""
        if self.choices is not None:
            return max(float(choice) for choice in self.choices)
        assert self.high is not None
        return float(self.high)

    def mean(self) -> float:
        """The mean of what a sampler draws before it learns anything: the choices' mean, a range's
        uniform or log-uniform mean (a numeric setting's)."""
        if self.choices is not None:
            return statistics.fmean(float(choice) for choice in self.choices)
        assert self.low is not None and self.high is not None
        if self.log and self.high > self.low:
            return (self.high - self.low) / math.log(self.high / self.low)
        return (self.low + self.high) / 2

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
    methods: Annotated[list[str], Distinct] = Field(default_factory=lambda: ["simnpo"], min_length=1)
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
    method_choice: Literal["sampled", "round_robin"] = Field(
        "sampled",
        description="sampled: the method is a categorical of one joint search, which spends the trials "
        "where the front of all methods is; round_robin: trial i unlearns with methods[i mod "
        "len(methods)], each method's ranges sampled by a sampler of its own from that method's trials "
        "only: an equal share of the trials per method, and a method another dominates still searched "
        "(perf/search_efficiency.py measures both)",
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
        description="start no trial after this many minutes of trials; running ones stop after their "
        "current epoch with `evaluation.every_epoch` (their evaluated epochs kept), else at once; "
        "None: run num_trials",
    )
    seed: Seed = 0
    deterministic: bool = Field(
        True,
        description="same trials and numbers from the same file and seed, whatever the trials' timing: with "
        "k trials at a time, suggestion i is made from the results of trials 0..i-(2k-1) only (a slot "
        "waits while trial i-(2k-1) runs), and early stopping judges trial i against those trials; "
        "false: a trial is suggested as soon as a slot frees, from every trial ended by then",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _drop_nulls(cls, space: Any) -> Any:
        # `--set search.space.simnpo=null` removes a method's space (to search fewer methods of a
        # file), `--set search.space.simnpo.method.gamma=null` one range (the run's value stays)
        if not isinstance(space, dict):
            return space
        return {
            method: {k: r for k, r in ranges.items() if r is not None} if isinstance(ranges, dict) else ranges
            for method, ranges in space.items()
            if ranges is not None
        }

    @model_validator(mode="after")
    def _round_robin_seeds(self) -> SearchSettings:
        # round_robin seeds method i's sampler with seed + i: every one must be a seed too
        last = self.seed + len(self.methods) - 1
        if self.method_choice == "round_robin" and last > MAX_SEED:
            raise ValueError(
                f"search.seed: round_robin seeds method i's sampler with seed + i, up to {last}; "
                f"allowed: 0 to {MAX_SEED - len(self.methods) + 1} with {len(self.methods)} methods"
            )
        return self

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

    attacks: Annotated[list[Literal["shortest", "random"]], Distinct] = Field(
        default_factory=lambda: ["shortest", "random"], min_length=1
    )
    fraction: float = Field(0.2, gt=0, le=1, description="share of the forget set relearned (paper: 20%)")
    seeds: Annotated[list[Seed], Distinct] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=1,
        description="random-relearn draws (paper: 5); shortest-relearn trains with the first",
    )
    epochs: int = Field(3, gt=0, description="relearning epochs; forget quality after each (paper: 3)")
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(4, gt=0)
    methods: Annotated[list[str], Distinct] | None = Field(
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
    `search.objectives.<i>.metric` or `.mode` and what is allowed."""
    from ..benchmarks.registry import BENCHMARKS
    from ..maths.metrics import METRICS

    bench = BENCHMARKS[benchmark_name]
    for i, objective in enumerate(objectives):
        metric = objective.metric
        first = next(j for j, o in enumerate(objectives) if o.metric == metric)
        if first < i:
            raise ValueError(
                f"search.objectives.{i}.metric: {metric} is objective {first} already; give each metric once"
            )
        if metric not in bench.metrics or metric not in METRICS:
            raise ValueError(
                f"search.objectives.{i}.metric: {metric!r} is not a metric of benchmark {bench.name}; "
                f"allowed: {', '.join(bench.metrics)}"
            )
        direction = METRICS[metric].direction
        if direction == "zero":
            usable = [m for m in bench.metrics if METRICS[m].direction != "zero"]
            raise ValueError(
                f"search.objectives.{i}.mode: {metric} is best closest to 0, which neither max nor min "
                f"expresses; allowed metrics of benchmark {bench.name}: {', '.join(usable)}"
            )
        if objective.mode != direction:
            raise ValueError(
                f"search.objectives.{i}.mode: {objective.mode!r} contradicts {metric}, where "
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
    run: RunSettings = RunSettings()
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

        bench = BENCHMARKS.get(str(name or RunSettings.model_fields["benchmark"].default))
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
        if self.search.early_stop is not None and not self.run.evaluation.every_epoch:
            raise ValueError(
                "search.early_stop: needs per-epoch points; set run.evaluation.every_epoch: true"
            )
        extra = [m for m in self.search.space if m not in self.search.methods]
        if extra:
            raise ValueError(
                f"search.space: {extra} not in search.methods {self.search.methods}; allowed: a space per "
                f"searched method (remove the others, e.g. --set search.space.{extra[0]}=null)"
            )
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

    def trial_run_config(self, params: Mapping[str, Any]) -> RunSettings:
        """The run of one trial: the base run with the sampled `method` and its dotted settings
        (`{"method": "simnpo", "simnpo": {"method.beta": 2.5, ...}}`, as the search space names them)."""
        method = params["method"]
        data = self.run.model_dump(mode="json")
        if data["method"]["name"] != method:
            data["method"] = {"name": method}
        overrides = [f"{k}={json.dumps(v)}" for k, v in (params.get(method) or {}).items()]
        return RunSettings.model_validate(apply_overrides(data, overrides, RunSettings))


def load_sweep_config(
    name_or_path: str, overrides: Iterable[str] = (), labels: Mapping[str, str] | None = None
) -> SweepConfig:
    """A sweep file with `--set` overrides applied; `labels` names overrides that came from a flag
    or an environment variable (e.g. `storage=...` from RAYSIMNPO_STORAGE) in error messages."""
    path = sweep_file(name_or_path)
    return validate(SweepConfig, load_yaml(path), str(path), overrides, labels)


RESUME_MAY_CHANGE = (
    "storage",
    "run.cache_dir",
    "search.num_trials",
    "search.time_budget_minutes",
    "search.max_concurrent_trials",
    "resources",
    "fault_tolerance",
    "relearn",
    "tracking",
)
"""What a resumed sweep may set anew: how many trials and how long, where and on what it runs, and
what happens after the trials. Everything else (the run, the space, the objectives, the sampler)
decides the numbers its trials already have, so a change would mix two sweeps in one study."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def resume_changes(started: Mapping[str, Any], now: SweepConfig) -> list[tuple[str, Any, Any]]:
    """(dotted setting, value when started, value now) for each setting that differs between the
    sweep as it was started (`started`: its `sweep.json`, a JSON dump of the SweepConfig) and as it
    is resumed, except `RESUME_MAY_CHANGE`. The started settings are validated again first, so a
    setting added to raysimnpo since then counts with its default, not as a change."""
    # one written by a version whose settings this one no longer reads is compared as it is
    with contextlib.suppress(ValidationError):
        started = SweepConfig.model_validate(started).model_dump(mode="json")
    before, after = _flat(dict(started)), _flat(now.model_dump(mode="json"))
    return [
        (key, before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
        and not any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUME_MAY_CHANGE)
    ]
