"""Validation that is complete, table-tested through the command lines in this process.

Every case of a class runs `python -m raysimnpo.sweep` / `.run` / `.relearn` through its `main()`:
exit code 2, exactly one line on stderr, and that line is the expected message, word for word;
nothing is written under the sweep's storage and Ray is never started. The classes: every value
the search can produce is validated (1), floats are finite (2), Ray arguments and the cluster's
capacity (4), file-level problems (5), quietly accepted input now refused (6), and where the bad
value came from (8). `--set` parsing (7) and the resumed progress line (9) are tested directly.
"""

from __future__ import annotations

import math
import os
import socket
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from raysimnpo.cli import relearn, run, sweep
from raysimnpo.config.base import _members
from raysimnpo.config.run import RunSettings
from raysimnpo.config.sweep import ParamRange, SweepConfig, load_sweep_config
from raysimnpo.errors import UserInputError
from tests.sweep_files import write_citest_sweep

CPUS = os.cpu_count()


def space(method: str, key: str, rng: dict[str, Any], methods: tuple[str, ...] = ("simnpo", "npo")) -> Any:
    return {"methods": list(methods), "num_trials": 2, "space": {method: {key: rng}}}


def yaml_file(**changes: Any) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        return str(write_citest_sweep(tmp, **changes))

    return write


def text_file(text: str | bytes) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        path = tmp / "citest.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text.replace("TMP", str(tmp)))
        return str(path)

    return write


@dataclass(frozen=True)
class Case:
    id: str
    file: Callable[[Path], str]
    args: tuple[str, ...]
    message: str  # the whole line after "error: "; {file}, {tmp} and {cpus} are filled in
    entry: str = "sweep"
    env: dict[str, str] = field(default_factory=dict)


DEFAULT = yaml_file()
HEADER = "name: citest\nstorage: TMP/runs\nrun:\n  cache_dir: TMP/cache\n"

CASES = [
    # ---- 1. every value the search can produce goes through the trial's models
    Case(
        "search-second-choice",
        yaml_file(search=space("simnpo", "method.beta", {"choices": [1.0, -1.0]})),
        (),
        "{file}: search.space.simnpo.method.beta: choices[1] -1.0 is refused: "
        "method.simnpo.beta: Input should be greater than 0 (got -1.0)",
    ),
    Case(
        "search-range-high",
        yaml_file(search=space("npo", "muse.min_k", {"low": 0.2, "high": 1.5})),
        (),
        "{file}: search.space.npo.muse.min_k: high 1.5 is refused: "
        "muse.min_k: Input should be less than or equal to 1 (got 1.5)",
    ),
    Case(
        "search-float-range-over-integer",
        DEFAULT,
        ("--set", "search.space.npo.unlearn.epochs={low: 3, high: 8}"),
        "--set search.space.npo.unlearn.epochs={low: 3, high: 8}: search.space.npo.unlearn.epochs: "
        "a value inside the range 5.5 is refused: unlearn.epochs: Input should be a valid integer, got a "
        "number with a fractional part (got 5.5); a whole-number setting needs integer: true",
    ),
    Case(
        "search-integer-log-range-low",
        yaml_file(
            search=space("rmu", "method.layer", {"low": -2, "high": 3, "integer": True}, methods=("rmu",))
        ),
        (),
        "{file}: search.space.rmu.method.layer: low -2 is refused: "
        "method.rmu.layer: Input should be greater than or equal to 0 (got -2)",
    ),
    Case(
        "search-setting-of-another-method",
        yaml_file(search=space("npo", "method.gamma", {"choices": [0.0, 1.0]})),
        (),
        "{file}: search.space.npo.method.gamma: choices[0] 0.0 is refused: "
        "method.npo.gamma: unknown setting (got 0.0)",
    ),
    # ---- 2. every float is finite
    Case(
        "finite-learning-rate",
        DEFAULT,
        ("--set", "run.unlearn.learning_rate=.inf"),
        "--set run.unlearn.learning_rate=.inf: run.unlearn.learning_rate: "
        "Input should be a finite number (got inf)",
    ),
    Case(
        "finite-range-bound",
        text_file(
            HEADER + "search:\n  methods: [simnpo]\n  space:\n    simnpo:\n"
            "      method.beta: {low: 1.0, high: .inf}\n"
        ),
        (),
        "{file}: search.space.simnpo.method.beta.high: Input should be a finite number (got inf)",
    ),
    Case(
        "finite-beta-choice",
        yaml_file(search=space("simnpo", "method.beta", {"choices": [1.0, float("nan")]})),
        (),
        "{file}: search.space.simnpo.method.beta.choices: choices[1] is nan; every choice must be a finite "
        "number or a word",
    ),
    Case(
        "finite-resources",
        DEFAULT,
        ("--set", "resources.cpus_per_worker=.nan"),
        "--set resources.cpus_per_worker=.nan: resources.cpus_per_worker: "
        "Input should be a finite number (got nan)",
    ),
    Case(
        "finite-relearn",
        yaml_file(relearn={"learning_rate": float("inf")}),
        (),
        "{file}: relearn.learning_rate: Input should be a finite number (got inf)",
    ),
    Case(
        "finite-run-cli-method",
        DEFAULT,
        ("--method", "simnpo", "--set", "method.gamma=-.inf"),
        "--set method.gamma=-.inf: method.simnpo.gamma: Input should be a finite number (got -inf)",
        entry="run",
    ),
    # ---- the noise ceiling needs forget quality and a Retrain that can be fine-tuned again from seed + 1
    Case(
        "noise-ceiling-no-forget-quality",
        DEFAULT,
        ("--set", "run.benchmark=muse", "--set", "run.evaluation.noise_ceiling=true"),
        "--set run.evaluation.noise_ceiling=true: run.evaluation.noise_ceiling: benchmark muse has no "
        "forget_quality; allowed: false",
    ),
    Case(
        "noise-ceiling-released-retrain",
        yaml_file(run={"evaluation": {"noise_ceiling": True}}),
        (
            "--set",
            "run.data.original_model=open-unlearning/tofu_Llama-2-7b-chat-hf_full",
            "--set",
            "run.data.retrain_model=open-unlearning/tofu_Llama-2-7b-chat-hf_retain90",
        ),
        "{file}: run.evaluation.noise_ceiling: needs a Retrain fine-tuned here, to fine-tune again from seed + 1; the "
        "Retrain is the released 'open-unlearning/tofu_Llama-2-7b-chat-hf_retain90'; allowed: false",
    ),
    Case(
        "noise-ceiling-released-retrain-run-cli",
        DEFAULT,
        (
            "--set",
            "evaluation.noise_ceiling=true",
            "--set",
            "data.original_model=open-unlearning/tofu_Llama-2-7b-chat-hf_full",
            "--set",
            "data.retrain_model=open-unlearning/tofu_Llama-2-7b-chat-hf_retain90",
        ),
        "--set evaluation.noise_ceiling=true: evaluation.noise_ceiling: needs a Retrain fine-tuned here, to "
        "fine-tune again from seed + 1; the Retrain is the released "
        "'open-unlearning/tofu_Llama-2-7b-chat-hf_retain90'; allowed: false",
        entry="run",
    ),
    # ---- 4. Ray arguments and whether the cluster can ever hold one trial
    Case(
        "ray-negative-cpus",
        DEFAULT,
        ("--num-cpus", "-2"),
        "--num-cpus: '-2'; give a positive whole number of CPUs for the local Ray (this machine has {cpus})",
    ),
    Case(
        "ray-zero-cpus",
        DEFAULT,
        ("--num-cpus", "0"),
        "--num-cpus: '0'; give a positive whole number of CPUs for the local Ray (this machine has {cpus})",
    ),
    Case(
        "ray-address-form",
        DEFAULT,
        ("--address", "not a host"),
        "--address: 'not a host' is not a Ray address; allowed: host:port of the head (e.g. 10.0.0.5:6379), "
        "ray://host:port, auto",
    ),
    Case(
        "ray-address-unreachable",
        DEFAULT,
        ("--address", "127.0.0.1:PORT", "--address-timeout", "2"),
        "--address: no Ray head answers at 127.0.0.1:PORT within 2 s (Connection refused); start the "
        "cluster or fix the address (a slow network: --address-timeout SECONDS)",
    ),
    Case(
        "ray-address-from-environment",
        DEFAULT,
        (),
        "RAY_ADDRESS: 'head:node:6379' is not a Ray address; allowed: host:port of the head "
        "(e.g. 10.0.0.5:6379), ray://host:port, auto",
        env={"RAY_ADDRESS": "head:node:6379"},
    ),
    Case(
        "ray-address-timeout",
        DEFAULT,
        ("--address-timeout", "-1"),
        "--address-timeout: -1.0; give a number of seconds > 0",
    ),
    Case(
        "ray-relearn-cpus",
        DEFAULT,
        ("--num-cpus", "two"),
        "--num-cpus: 'two'; give a positive whole number of CPUs for the local Ray (this machine has {cpus})",
        entry="relearn",
    ),
    Case(
        "capacity-gpus-on-cpu-machine",
        yaml_file(resources={"gpus_per_worker": 1}),
        (),
        "resources: a trial needs 1 GPUs (workers x gpus_per_worker; preparing needs 1), but a local Ray on "
        "this machine has 0; set resources.gpus_per_worker=0 and run.device=auto or cpu, or join a cluster "
        "with GPUs",
        env={"CUDA_VISIBLE_DEVICES": ""},
    ),
    Case(
        "capacity-cpus",
        yaml_file(resources={"workers": 2, "cpus_per_worker": 2}),
        ("--num-cpus", "3"),
        "resources: a trial needs 4.01 CPUs (workers x cpus_per_worker), but a local Ray on this machine "
        "has 3 (--num-cpus); lower resources.cpus_per_worker or resources.workers",
    ),
    Case(
        "capacity-custom-resource",
        yaml_file(resources={"custom": {"trial_worker": 1}}),
        (),
        "resources.custom.trial_worker: a trial needs 1, but a local Ray on this machine has 0; join a "
        "cluster whose nodes have it (--address) or remove it",
    ),
    Case(
        "capacity-cuda-without-gpus",
        DEFAULT,
        ("--set", "run.device=cuda"),
        "--set run.device=cuda: run.device: cuda needs resources.gpus_per_worker > 0 (a trial sees a GPU "
        "only when it asks Ray for one); or use auto or cpu",
    ),
    # ---- 5. file-level problems
    Case(
        "file-not-utf8",
        text_file(b"name: citest\nstorage: caf\xe9\n"),
        (),
        "{file}: not UTF-8 text (byte 0xe9 on line 2); save the file as UTF-8",
    ),
    Case(
        "file-name-too-long",
        yaml_file(name="n" * 101),
        (),
        "{file}: name: String should have at most 100 characters (got '" + "n" * 101 + "')",
    ),
    Case(
        "file-is-a-folder",
        lambda tmp: str((tmp / "folder.yaml").mkdir() or tmp / "folder.yaml"),
        (),
        "{tmp}/folder.yaml: no such file",
    ),
    # ---- 6. quietly accepted before
    Case(
        "duplicate-top-level-key",
        text_file(HEADER + "name: other\n"),
        (),
        "{file}: line 5: duplicate key 'name' (first given on line 1); give each setting once",
    ),
    Case(
        "duplicate-nested-key",
        text_file(
            HEADER + "search:\n  methods: [simnpo]\n  space:\n    simnpo:\n"
            "      method.beta: {low: 1.0, high: 2.0}\n      method.beta: {low: 3.0, high: 4.0}\n"
        ),
        (),
        "{file}: line 10: duplicate key 'method.beta' (first given on line 9); give each setting once",
    ),
    Case(
        "duplicate-key-in-set-value",
        DEFAULT,
        ("--set", "search.space.simnpo.method.beta={low: 1, low: 2}"),
        "--set search.space.simnpo.method.beta={low: 1, low: 2}: duplicate key 'low' (first given on line 1)",
    ),
    Case(
        "integer-range-fractional-high",
        DEFAULT,
        ("--set", "search.space.simnpo.unlearn.epochs={low: 2, high: 8.5, integer: true}"),
        "--set search.space.simnpo.unlearn.epochs={low: 2, high: 8.5, integer: true}: "
        "search.space.simnpo.unlearn.epochs: an integer range needs whole-number bounds (high: 8.5)",
    ),
    Case(
        "integer-log-range-from-zero",
        yaml_file(
            search=space("simnpo", "unlearn.epochs", {"low": 0, "high": 8, "integer": True, "log": True})
        ),
        (),
        "{file}: search.space.simnpo.unlearn.epochs: an integer log range needs low >= 1 (got 0)",
    ),
    Case(
        "absurd-num-trials",
        DEFAULT,
        ("--set", "search.num_trials=1000000000"),
        "--set search.num_trials=1000000000: search.num_trials: Input should be less than or equal to 10000 "
        "(got 1000000000)",
    ),
    Case(
        "zero-time-budget",
        DEFAULT,
        ("--set", "search.time_budget_minutes=0"),
        "--set search.time_budget_minutes=0: search.time_budget_minutes: Input should be greater than 0 (got 0)",
    ),
    # ---- 8. the message names where the bad value came from
    Case(
        "source-set-not-file",
        DEFAULT,
        ("--set", "run.method.beta=-1"),
        "--set run.method.beta=-1: run.method.simnpo.beta: Input should be greater than 0 (got -1)",
    ),
    Case(
        "source-file-not-set",
        yaml_file(run={"unlearn": {"epochs": 0}}),
        ("--set", "run.unlearn.batch_size=4"),
        "{file}: run.unlearn.epochs: Input should be greater than 0 (got 0)",
    ),
    Case(
        "source-environment-variable",
        DEFAULT,
        (),
        "RAYSIMNPO_STORAGE: storage: s3://... holds credentials; give them in the environment "
        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance role, GOOGLE_APPLICATION_CREDENTIALS)",
        env={"RAYSIMNPO_STORAGE": "s3://AKIAEXAMPLE:secret@bucket/runs"},
    ),
    Case(
        "resume-nothing",
        DEFAULT,
        ("--resume",),
        "--resume: {tmp}/runs/citest holds no sweep to continue; run without --resume to start it, or give "
        "the --storage and name it ran with",
    ),
    Case(
        "cache-dir-cannot-be-made",
        text_file(HEADER.replace("TMP/cache", "/proc/raysimnpo-cache")),
        (),
        "run.cache_dir: /proc/raysimnpo-cache is not writable (Cannot create directory ''. Detail: "
        "[errno 2] No such file or directory)",
    ),
    Case(
        "source-storage-flag",
        DEFAULT,
        ("--storage", "/proc/raysimnpo-runs"),
        "--storage: storage: /proc/raysimnpo-runs is not writable (Cannot create directory ''. Detail: "
        "[errno 2] No such file or directory)",
    ),
    Case(
        "source-method-flag",
        DEFAULT,
        ("--method", "forget_all"),
        "--method forget_all: method: Input tag 'forget_all' found using 'name' does not match any of the "
        "expected tags: 'ga', 'grad_diff', 'npo', 'simnpo', 'w_grad_diff', 'idk_nll', 'idk_dpo', 'rmu', "
        "'task_vector'",
        entry="run",
    ),
]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_ray_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray is a test failure: every mistake must be found before."""
    from raysimnpo.orchestration import cluster

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started before the mistake was reported")

    monkeypatch.setattr(cluster, "start_ray", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mistake_is_one_line_exit_2_before_ray(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    no_ray_start: None,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAYSIMNPO_STORAGE", raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    file = case.file(tmp_path)
    port = str(closed_port())
    args = [a.replace("PORT", port) for a in case.args]
    mains = {"sweep": sweep.main, "run": run.main, "relearn": relearn.main}
    argv = [file, *args]
    if case.entry == "run":
        argv += ["--set", f"cache_dir={tmp_path / 'cache'}"]
    code = mains[case.entry](argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    fill = {"{file}": file, "{tmp}": str(tmp_path), "{cpus}": str(CPUS), "PORT": port}
    expected = case.message
    for placeholder, value in fill.items():
        expected = expected.replace(placeholder, value)
    assert err == ["error: " + expected]
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache" / "prepared").exists()


# ------------------------------------------------------------------- 2. every float, as a class


def settings_where(
    model: type[BaseModel], picks: Callable[[Any, str], bool], prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel], str]]:
    """Every setting `picks(type, name)` takes that is reachable from `model` (through sections,
    mappings and lists): its dotted path, the model that declares it, and how the value sits in the
    field (`x`, `[x]`, `{k: x}`)."""
    for name, info in model.model_fields.items():
        shapes = [(m, "x") for m in _members(info.annotation)]
        while any(typing.get_origin(m) in (dict, list) for m, _ in shapes):
            shapes = [
                (inner, (f"[{shape}]" if typing.get_origin(m) is list else f"{{k: {shape}}}"))
                if typing.get_origin(m) in (dict, list)
                else (m, shape)
                for m, shape in shapes
                for inner in (
                    _members(typing.get_args(m)[-1]) if typing.get_origin(m) in (dict, list) else [m]
                )
            ]
        for member, shape in shapes:
            if picks(member, name):
                yield f"{prefix}{name}", model, shape
            elif isinstance(member, type) and issubclass(member, BaseModel) and shape == "x":
                yield from settings_where(member, picks, f"{prefix}{name}.")


def every_setting_where(picks: Callable[[Any, str], bool]) -> list[tuple[str, type[BaseModel], str]]:
    from raysimnpo.benchmarks.markov import MarkovSweep
    from raysimnpo.data.generators.muse import MuseGeneratorConfig
    from raysimnpo.data.generators.wmdp import WmdpGeneratorConfig

    seen: dict[tuple[type[BaseModel], str], tuple[str, str]] = {}
    for root in (SweepConfig, MarkovSweep, ParamRange, MuseGeneratorConfig, WmdpGeneratorConfig):
        for path, owner, shape in settings_where(root, picks):
            seen.setdefault((owner, path.rsplit(".", 1)[-1]), (path, shape))
    return sorted(((path, owner, shape) for (owner, _), (path, shape) in seen.items()), key=lambda i: i[0])


FLOATS = every_setting_where(lambda t, _: t is float)
SEEDS = every_setting_where(lambda t, name: t is int and "seed" in name)


def test_the_float_table_reaches_every_section() -> None:
    owners = {owner.__name__ for _, owner, _ in FLOATS}
    assert {"TrainSettings", "ParamRange", "TrialResources", "RelearnSettings", "MuseSettings"} <= owners
    assert {"SimNPOParams", "TinyModelConfig", "BetaGrid"} <= owners
    assert len(FLOATS) >= 25


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize(("path", "owner", "shape"), FLOATS, ids=[p for p, _, _ in FLOATS])
def test_every_float_setting_refuses_non_finite(
    path: str, owner: type[BaseModel], shape: str, value: float
) -> None:
    """Each model that declares a float refuses inf and nan for it, whichever section holds it."""
    name = path.rsplit(".", 1)[-1]
    given: Any = value
    for wrapper in reversed(shape.replace("x", "").replace("k: ", "")):
        given = [given] if wrapper == "[" else {"k": given} if wrapper == "{" else given
    fields = {name: given}
    if "name" in owner.model_fields and owner.model_fields["name"].is_required():
        fields["name"] = typing.get_args(owner.model_fields["name"].annotation)[0]
    with pytest.raises(ValueError, match="finite number"):
        owner.model_validate(fields)


def test_the_seed_table_reaches_every_seed() -> None:
    paths = {path for path, _, _ in SEEDS}
    assert {
        "run.seed",
        "search.seed",
        "relearn.seeds",
        "run.data.source.generator.seed",
        "markov.seed",
    } <= paths
    assert {owner.__name__ for _, owner, _ in SEEDS} >= {"MuseGeneratorConfig", "WmdpGeneratorConfig"}


@pytest.mark.parametrize("value", [-1, 2**32], ids=["negative", "2**32"])
@pytest.mark.parametrize(("path", "owner", "shape"), SEEDS, ids=[p for p, _, _ in SEEDS])
def test_every_seed_setting_is_one_numpy_and_optuna_take(
    path: str, owner: type[BaseModel], shape: str, value: int
) -> None:
    """numpy's and Optuna's generators refuse a seed outside 0..2**32 - 1 in the middle of a run: each
    seed setting refuses it when the file is read, and takes both ends of the range."""
    name = path.rsplit(".", 1)[-1]

    def fields(seed: int) -> dict[str, Any]:
        return {name: [seed] if shape == "[x]" else seed}

    with pytest.raises(ValueError, match="greater than or equal to 0|less than or equal to 4294967295"):
        owner.model_validate(fields(value))
    for good in (0, 2**32 - 1):
        assert owner.model_validate(fields(good)) is not None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "search.methods=[simnpo, npo, simnpo]",
            "search.methods: simnpo given more than once; give each once",
        ),
        ("relearn.seeds=[0, 1, 1, 0]", "relearn.seeds: 0, 1 given more than once; give each once"),
        ("relearn.attacks=[random, random]", "relearn.attacks: random given more than once; give each once"),
        ("relearn.methods=[npo, npo]", "relearn.methods: npo given more than once; give each once"),
        (
            "search.objectives=[{metric: model_utility, mode: max}, {metric: model_utility, mode: max}]",
            "search.objectives.1.metric: model_utility is objective 0 already; give each metric once",
        ),
    ],
)
def test_a_repeat_in_a_list_of_things_to_run_once_is_refused(override: str, message: str) -> None:
    """A repeated method or relearning seed would run twice and weigh twice in a mean; a repeated
    objective makes a study of one objective counted twice."""
    with pytest.raises(UserInputError) as caught:
        load_sweep_config("tofu", [override])
    assert str(caught.value) == f"--set {override}: {message}"


def test_round_robin_seeds_every_methods_sampler_in_range() -> None:
    with pytest.raises(
        UserInputError, match=r"search.seed: round_robin seeds method i's sampler with seed \+ i"
    ):
        load_sweep_config("tofu", ["search.method_choice=round_robin", f"search.seed={2**32 - 1}"])
    assert load_sweep_config("tofu", ["search.method_choice=round_robin", f"search.seed={2**32 - 2}"])


# ------------------------------------------------------------------------------- 7. --set parsing


@pytest.mark.parametrize(
    ("override", "check"),
    [
        (
            "search.space.simnpo.method.beta={low: 2, high: 3}",
            lambda s: s.search.space["simnpo"]["method.beta"] == ParamRange(low=2, high=3),
        ),
        (
            "search.space.npo.unlearn.batch_size={choices: [8, 16]}",  # a key the file does not have
            lambda s: s.search.space["npo"]["unlearn.batch_size"].choices == [8, 16],
        ),
        (
            "search.space.simnpo.method.beta.high=4.5",
            lambda s: s.search.space["simnpo"]["method.beta"] == ParamRange(low=1.0, high=4.5),
        ),
        (
            "search.objectives.1.metric=retain_prob",
            lambda s: [o.metric for o in s.search.objectives] == ["forget_quality", "retain_prob"],
        ),
        ("search.methods=[simnpo, ga]", lambda s: s.search.methods == ["simnpo", "ga"]),
        ("resources.custom.trial_worker=1", lambda s: s.resources.custom == {"trial_worker": 1.0}),
        (
            "run.data.source={kind: local, path: /data/tofu}",
            lambda s: (s.run.data.source.kind, s.run.data.source.path) == ("local", "/data/tofu"),
        ),
        ("run.method.beta=3.5", lambda s: s.run.method.beta == 3.5),
    ],
)
def test_set_follows_the_config_sections(tmp_path: Path, override: str, check: Callable[[Any], bool]) -> None:
    config = load_sweep_config(yaml_file()(tmp_path), [override])
    assert check(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "search.objectives.2.mode=min",
            "--set search.objectives.2.mode=min: search.objectives is a list of 2; give an index from 0 to 1, "
            "or the whole list",
        ),
        (
            "run.unlearn.epochs.max=3",
            "--set 'run.unlearn.epochs.max=3': run.unlearn.epochs is a value, not a section; "
            "set it directly (run.unlearn.epochs=...)",
        ),
        (
            "search.space.simnpo.method.beta.step=2",
            "--set search.space.simnpo.method.beta.step=2: search.space.simnpo.method.beta.step: unknown "
            "setting (got 2)",
        ),
    ],
)
def test_set_mistakes_name_the_override(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UserInputError) as info:
        load_sweep_config(yaml_file()(tmp_path), [override])
    assert str(info.value) == message


def test_trial_run_config_takes_the_same_dotted_keys() -> None:
    sweep_config = SweepConfig(name="x")
    trial = sweep_config.trial_run_config({"method": "npo", "npo": {"method.beta": 0.3, "unlearn.epochs": 2}})
    assert isinstance(trial, RunSettings)
    assert (trial.method.name, trial.method.beta, trial.unlearn.epochs) == ("npo", 0.3, 2)


# ------------------------------------------------------------------- 9. the resumed progress line


@dataclass
class FakeTrial:
    trial_id: str
    status: str
    last_result: dict[str, float] = field(default_factory=dict)


def make_study(path: Path) -> object:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    return optuna.create_study(study_name="demo", storage=storage, directions=["maximize", "maximize"])


def test_progress_counts_every_trial_of_the_study_after_a_resume(tmp_path: Path) -> None:
    """The counts come from the study: trials finished before a resume (or in an earlier Tune
    experiment of an extended sweep) count; never-run `interrupted` ones and epoch points do not."""
    import optuna

    from raysimnpo.orchestration.study import EPOCH_POINT, INTERRUPTED
    from raysimnpo.orchestration.tuner import Progress

    study = make_study(tmp_path / "optuna.sqlite")
    for fq in (0.0, 0.1, 0.2):
        study.add_trial(optuna.trial.create_trial(values=[fq, 0.5]))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={INTERRUPTED: True})
    )
    study.add_trial(optuna.trial.create_trial(values=[0.95, 0.1], user_attrs={EPOCH_POINT: True}))
    running = [study.ask(), study.ask()]
    lines: list[str] = []
    objectives = [("forget_quality", "max"), ("model_utility", "max")]
    progress = Progress(6, lines.append, objectives, tmp_path / "optuna.sqlite", "demo")
    trials = [FakeTrial("t4", "RUNNING"), FakeTrial("t5", "RUNNING")]
    progress._line(trials)
    assert lines[-1].startswith("[sweep] 3/6 done, 2 running, 1 failed | best FQ 0.95 best MU 0.5 |")
    for ot_trial, trial in zip(running, trials, strict=True):
        study.tell(ot_trial, [0.9, 0.4])  # Tune's searcher tells the study before the callbacks run
        progress.on_trial_complete(0, trials, trial)
        trial.status = "TERMINATED"
    assert lines[-1].startswith("[sweep] 5/6 done, 0 running, 1 failed | best FQ 0.95 best MU 0.5 |")
    progress._line(trials)  # another event counts nothing twice
    assert lines[-1].startswith("[sweep] 5/6 done, 0 running, 1 failed")


def test_a_config_mistake_is_reported_without_torch_transformers_or_ray(tmp_path: Path) -> None:
    """The error line comes before the heavy imports (they take seconds): checked in a fresh process."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from raysimnpo import sweep\n"
        "assert sweep.main(['tofu', '--set', 'search.num_trials=-1']) == 2\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
    )
    env = {**os.environ, "RAYSIMNPO_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
    assert done.stderr.strip() == (
        "error: --set search.num_trials=-1: search.num_trials: Input should be greater than 0 (got -1)"
    )


def test_a_joined_cluster_that_cannot_hold_a_trial_is_named_with_its_numbers() -> None:
    from raysimnpo.orchestration.cluster import TrialDemand, _check_fits

    demand = TrialDemand(cpus=4.01, gpus=2.0, custom={}, prepare_gpus=1.0)
    with pytest.raises(UserInputError) as info:
        _check_fits(demand, {"CPU": 64.0, "GPU": 1.0}, "the cluster at 10.0.0.5:6379")
    assert str(info.value) == (
        "resources: a trial needs 2 GPUs (workers x gpus_per_worker; preparing needs 1), but the cluster at "
        "10.0.0.5:6379 has 1; set resources.gpus_per_worker=0 and run.device=auto or cpu, or join a cluster "
        "with GPUs"
    )
    _check_fits(demand, {"CPU": 4.01, "GPU": 2.0}, "the cluster at 10.0.0.5:6379")  # exactly enough


@pytest.mark.parametrize(
    ("entry", "argv", "message"),
    [
        (
            "sweep",
            ["tofu", "--num-cpu", "2"],
            "error: unrecognized arguments: --num-cpu 2 (see python -m raysimnpo.sweep --help)",
        ),
        (
            "run",
            [],
            "error: the following arguments are required: benchmark (see python -m raysimnpo.run --help)",
        ),
        (
            "report",
            ["runs/tofu", "--examples", "many"],
            "error: argument --examples: invalid int value: 'many' (see python -m raysimnpo.report --help)",
        ),
    ],
)
def test_flag_mistakes_are_one_line_too(
    entry: str, argv: list[str], message: str, capfd: pytest.CaptureFixture[str], no_ray_start: None
) -> None:
    from raysimnpo.cli import report

    mains = {"sweep": sweep.main, "run": run.main, "report": report.main}
    with pytest.raises(SystemExit) as stopped:
        mains[entry](argv)
    assert stopped.value.code == 2
    assert capfd.readouterr().err.strip().splitlines() == [message]


def test_resume_changes_name_what_decides_the_numbers_and_let_the_rest_change() -> None:
    from raysimnpo.config.sweep import resume_changes

    started = load_sweep_config("tofu").model_dump(mode="json")
    moved = [
        "search.num_trials=40",
        "search.time_budget_minutes=5",
        "resources.workers=2",
        "storage=/elsewhere",
    ]
    assert resume_changes(started, load_sweep_config("tofu", moved)) == []
    changed = load_sweep_config("tofu", ["run.unlearn.learning_rate=0.5"])
    assert resume_changes(started, changed) == [("run.unlearn.learning_rate", 1e-3, 0.5)]
    widened = load_sweep_config("tofu", ["search.space.npo.method.beta.high=0.5"])
    assert resume_changes(started, widened) == [("search.space.npo.method.beta.high", 0.23, 0.5)]
    searched = load_sweep_config("tofu", ["search.space.npo.unlearn.batch_size={choices: [8, 16]}"])
    found = resume_changes(started, searched)  # a newly searched setting: each part of its range
    assert found[0] == ("search.space.npo.unlearn.batch_size.choices", None, [8, 16])
    assert {key.rsplit(".", 1)[0] for key, _, _ in found} == {"search.space.npo.unlearn.batch_size"}
    # a sweep.json written before a setting existed: the setting counts with its default
    del started["search"]["deterministic"]
    assert resume_changes(started, load_sweep_config("tofu")) == []


@pytest.mark.parametrize(
    ("searched", "largest", "mean"),
    [
        (ParamRange(choices=[4, 8, 16, 32]), 32.0, 15.0),  # (4 + 8 + 16 + 32) / 4
        (ParamRange(low=7, high=12, integer=True), 12.0, 9.5),  # 7..12, each alike
        (ParamRange(low=1.0, high=math.e, log=True), math.e, math.e - 1.0),  # (e - 1) / ln(e / 1)
        (ParamRange(low=3.0, high=3.0, log=True), 3.0, 3.0),  # one value
    ],
)
def test_a_range_knows_its_largest_value_and_the_mean_an_unguided_sampler_draws(
    searched: ParamRange, largest: float, mean: float
) -> None:
    assert searched.largest() == largest
    assert searched.mean() == pytest.approx(mean, rel=1e-12)


def test_null_removes_a_methods_space_or_one_range_so_a_file_can_search_fewer_methods() -> None:
    with pytest.raises(
        UserInputError, match=r"allowed: a space per searched method .*search\.space\.simnpo=null"
    ):
        load_sweep_config("tofu", ["search.methods=[npo]"])
    sweep = load_sweep_config(
        "tofu", ["search.methods=[npo]", "search.space.simnpo=null", "search.space.npo.method.beta=null"]
    )
    assert list(sweep.search.space) == ["npo"]
    assert sorted(sweep.search.space["npo"]) == [
        "method.retain_weight",
        "unlearn.epochs",
        "unlearn.learning_rate",
    ]
    # β no longer searched: every NPO trial keeps NPO's own default, 0.1
    assert sweep.trial_run_config({"method": "npo", "npo": {"method.retain_weight": 1.0}}).method.beta == 0.1
