"""Bad input, table-tested: every case is one `error: ...` line on stderr naming the file or field and
what is allowed, exit code 2, and nothing written under the sweep's storage or the cache's prepared/.

Cases already covered elsewhere (and counted with these in issue 9's total) are not repeated here:
tests/config/test_config.py (bad values per field, unknown sweep, malformed --set, invalid YAML),
tests/cli/test_run.py (unknown benchmark/method, bad β/γ/λ, missing split, corrupt JSONL line, empty
answer, max_length leaving no answer token), tests/orchestration/test_sweep.py (unknown sweep, bad
search range, sampler, unknown method, unwritable storage).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raysimnpo.cli import run, sweep
from tests.sweep_files import write_citest_sweep


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]  # (tmp_path, local TOFU folder) -> argv after the entry point
    expected: tuple[str, ...]  # substrings of the one error line
    entry: str = "run"  # run: python -m raysimnpo.run; sweep: python -m raysimnpo.sweep


@pytest.fixture(scope="module")
def tofu_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raysimnpo.data.generators.tofu import TofuGeneratorConfig, generate_tofu_dataset

    folder = tmp_path_factory.mktemp("tofu-template")
    generate_tofu_dataset(folder, TofuGeneratorConfig.preset("small"))
    return folder


# ------------------------------------------------------------------------------------ builders


def _file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("")
    return tmp / "a-file"


def local(folder: Path) -> list[str]:
    return [
        "tofu",
        "--method",
        "simnpo",
        "--set",
        "data.source.kind=local",
        "--set",
        f"data.source.path={folder}",
    ]


def run_yaml(tmp: Path, run_section: object, **top: object) -> list[str]:
    path = tmp / "mine.yaml"
    path.write_text(yaml.safe_dump({**top, "run": run_section}))
    return [str(path)]


def sweep_yaml(tmp: Path, **changes: object) -> list[str]:
    return [str(write_citest_sweep(tmp, **changes))]


def list_yaml(tmp: Path) -> list[str]:
    path = tmp / "x.yaml"
    path.write_text("- name: a\n")
    return [str(path)]


def existing_sweep(tmp: Path) -> list[str]:
    """A sweep whose run folder already holds Tune state (an earlier run of the same name)."""
    (tmp / "runs" / "citest" / "tune").mkdir(parents=True)
    return sweep_yaml(tmp)


def search(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"methods": ["simnpo", "npo"], "num_trials": 2}
    return {**base, **changes}


def rewrite_jsonl(folder: Path, split: str, edit: Callable[[list[dict]], list[object]]) -> None:
    path = folder / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


def as_json_array(folder: Path, split: str, edit: Callable[[list[object]], list[object]]) -> None:
    path = folder / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.unlink()
    (folder / f"{split}.json").write_text(json.dumps(edit(rows), indent=1))


def as_parquet(folder: Path, split: str, edit: Callable[[list[dict]], list[dict]]) -> None:
    path = folder / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.unlink()
    pq.write_table(pa.Table.from_pylist(edit(rows)), folder / f"{split}.parquet")


def model_folder(tmp: Path, files: dict[str, str]) -> Path:
    folder = tmp / "my-model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def with_row(index: int, **fields: object) -> Callable[[list[dict]], list[dict]]:
    def edit(rows: list[dict]) -> list[dict]:
        rows[index] = {**rows[index], **fields}
        return rows

    return edit


def without(index: int, field: str) -> Callable[[list[dict]], list[dict]]:
    def edit(rows: list[dict]) -> list[dict]:
        rows[index].pop(field)
        return rows

    return edit


def data_case(case_id: str, change: Callable[[Path], None], *expected: str) -> Case:
    def setup(tmp: Path, tofu: Path) -> list[str]:
        change(tofu)
        return local(tofu)

    return Case(case_id, setup, expected)


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer saved as save_pretrained writes it (tokenizer.json and its config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>").save_pretrained(
        folder
    )


def model_case(case_id: str, files: dict[str, str], *expected: str, tokenizer: bool = False) -> Case:
    def setup(tmp: Path, tofu: Path) -> list[str]:
        folder = model_folder(tmp, files)
        if tokenizer:
            save_tokenizer(folder)
        return [*local(tofu), "--set", f"model.name={folder}"]

    return Case(case_id, setup, expected)


LLAMA_CONFIG = json.dumps(
    {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
    }
)


class WritesAFile:
    """Unpickling this would create a file: what a malicious pickled checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def pickled_model(tmp: Path) -> Path:
    """A model folder whose torch weights hold a pickled object besides the tensors (protocol 4, on
    which torch's weights-only unpickler warns before it refuses)."""
    import pickle

    folder = model_folder(tmp, {"config.json": LLAMA_CONFIG})
    save_tokenizer(folder)
    (folder / "pytorch_model.bin").write_bytes(
        pickle.dumps({"payload": WritesAFile(tmp / "code-ran")}, protocol=4)
    )
    return folder


CASES = [
    # ---- sweep YAML (python -m raysimnpo.sweep FILE)
    Case(
        "sweep-top-level-list",
        lambda t, _: list_yaml(t),
        ("x.yaml: expected a mapping of settings at the top level",),
        "sweep",
    ),
    Case(
        "sweep-unknown-section", lambda t, _: sweep_yaml(t, serach={}), ("serach: unknown setting",), "sweep"
    ),
    Case(
        "sweep-name-pattern",
        lambda t, _: sweep_yaml(t, name="my sweep"),
        ("citest.yaml: name: String should match pattern", "(got 'my sweep')"),
        "sweep",
    ),
    Case(
        "sweep-num-trials-zero",
        lambda t, _: sweep_yaml(t, search=search(num_trials=0)),
        ("search.num_trials: Input should be greater than 0",),
        "sweep",
    ),
    Case(
        "sweep-space-method-not-searched",
        lambda t, _: sweep_yaml(t, search=search(space={"ga": {"unlearn.epochs": {"low": 1, "high": 2}}})),
        ("search.space: ['ga'] not in search.methods",),
        "sweep",
    ),
    Case(
        "sweep-space-not-a-run-setting",
        lambda t, _: sweep_yaml(t, search=search(space={"npo": {"optimizer.lr": {"low": 1, "high": 2}}})),
        ("search.space.npo.optimizer.lr: not a run setting",),
        "sweep",
    ),
    Case(
        "sweep-log-range-at-zero",
        lambda t, _: sweep_yaml(
            t, search=search(space={"npo": {"method.beta": {"low": 0, "high": 1, "log": True}}})
        ),
        ("search.space.npo.method.beta", "a log range needs low > 0"),
        "sweep",
    ),
    Case(
        "sweep-range-and-choices",
        lambda t, _: sweep_yaml(
            t, search=search(space={"npo": {"method.beta": {"low": 0.1, "high": 1, "choices": [0.5]}}})
        ),
        ("search.space.npo.method.beta", "give either choices or low/high, not both"),
        "sweep",
    ),
    Case(
        "sweep-objective-mode",
        lambda t, _: sweep_yaml(
            t, search=search(objectives=[{"metric": "forget_quality", "mode": "maximize"}])
        ),
        ("search.objectives.0.mode: Input should be 'max' or 'min'",),
        "sweep",
    ),
    Case(
        "sweep-zero-workers",
        lambda t, _: sweep_yaml(t, resources={"workers": 0}),
        ("resources.workers: Input should be greater than 0",),
        "sweep",
    ),
    Case(
        "sweep-storage-uri-with-credentials",
        lambda t, _: sweep_yaml(t, storage="s3://AKIAEXAMPLE:secret@bucket/runs"),
        ("storage: s3://... holds credentials; give them in the environment",),
        "sweep",
    ),
    # ---- sweep CLI flags
    Case(
        "sweep-config-flag-missing-file",
        lambda t, _: ["tofu", "--config", str(t / "nope.yaml")],
        ("nope.yaml: no such file",),
        "sweep",
    ),
    Case(
        "sweep-methods-not-a-list",
        lambda t, _: [*sweep_yaml(t), "--set", "search.methods=simnpo"],
        ("search.methods: Input should be a valid list",),
        "sweep",
    ),
    Case(
        "sweep-existing-run-without-resume",
        lambda t, _: existing_sweep(t),
        ("already holds this sweep; pass --resume to continue it",),
        "sweep",
    ),
    # ---- run YAML (python -m raysimnpo.run FILE)
    Case(
        "run-section-not-a-mapping", lambda t, _: run_yaml(t, [1, 2]), ("mine.yaml: run: expected a mapping",)
    ),
    Case(
        "run-markov-benchmark",
        lambda t, _: run_yaml(t, {}, benchmark="markov"),
        ("mine.yaml: benchmark 'markov' runs as a sweep", "takes: tofu"),
    ),
    Case(
        "run-device",
        lambda t, _: run_yaml(t, {"device": "tpu"}),
        ("mine.yaml: device: Input should be 'auto', 'cpu' or 'cuda'", "(got 'tpu')"),
    ),
    Case(
        "run-max-forget-loss",
        lambda t, _: run_yaml(t, {"unlearn": {"max_forget_loss": 0}}),
        ("mine.yaml: unlearn.max_forget_loss: Input should be greater than 0",),
    ),
    Case(
        "run-local-source-without-path",
        lambda t, _: run_yaml(t, {"data": {"source": {"kind": "local"}}}),
        ("data.source: kind=local needs path",),
    ),
    Case(
        "run-evaluation-engine",
        lambda t, _: run_yaml(t, {"evaluation": {"engine": "spark"}}),
        ("evaluation.engine: Input should be 'auto', 'ray_data' or 'in_process'",),
    ),
    # ---- run CLI flags
    Case("set-empty-key", lambda t, _: ["tofu", "--set", "=5"], ("--set '=5': expected key=value",)),
    Case(
        "set-into-a-value",
        lambda t, _: ["tofu", "--set", "unlearn.epochs.max=3"],
        ("--set 'unlearn.epochs.max=3': unlearn.epochs is a value, not a section",),
    ),
    Case(
        "set-dtype", lambda t, _: ["tofu", "--set", "model.dtype=float16"], ("model.dtype: Input should be",)
    ),
    # ---- data files (a local TOFU folder)
    data_case("data-folder-missing", lambda f: shutil.rmtree(f), "data folder does not exist"),
    data_case(
        "jsonl-line-not-object",
        lambda f: (f / "forget10.jsonl").write_text((f / "forget10.jsonl").read_text() + "[1, 2]\n"),
        "forget10.jsonl: line",
        "expected a JSON object, got list",
    ),
    data_case(
        "jsonl-not-utf8",
        lambda f: (f / "retain90.jsonl").write_bytes(b'{"question": "\xff\xfe"}\n'),
        "retain90.jsonl: not UTF-8 text",
    ),
    data_case(
        "jsonl-missing-answer",
        lambda f: rewrite_jsonl(f, "forget10", without(1, "answer")),
        "forget10.jsonl: row 2 (line 2): missing field 'answer'",
        "needs question, answer",
    ),
    data_case(
        "jsonl-answer-not-string",
        lambda f: rewrite_jsonl(f, "full", with_row(0, answer=42)),
        "full.jsonl: row 1 (line 1): field 'answer' must be a string, got int",
    ),
    data_case(
        "jsonl-empty-split",
        lambda f: (f / "forget10.jsonl").write_text("\n"),
        "forget10.jsonl: split 'forget10' has no rows",
    ),
    data_case(
        "jsonl-perturbed-counts-differ",
        lambda f: rewrite_jsonl(f, "world_facts_perturbed", with_row(1, perturbed_answer=["only one"])),
        "world_facts_perturbed.jsonl: row 2",
        "every row of a split needs the same number",
    ),
    data_case(
        "json-array-element-not-object",
        lambda f: as_json_array(f, "forget10", lambda rows: [*rows, 7]),
        "forget10.json: element",
        "expected objects",
    ),
    data_case(
        "json-array-invalid",
        lambda f: (
            as_json_array(f, "forget10", lambda rows: rows)
            or (f / "forget10.json").write_text((f / "forget10.json").read_text()[:-3])
        ),
        "forget10.json: line",
        "invalid JSON",
    ),
    data_case(
        "parquet-corrupt",
        lambda f: (
            (f / "retain90.jsonl").unlink() or (f / "retain90.parquet").write_bytes(b"PAR1 not parquet")
        ),
        "retain90.parquet: cannot read Parquet",
    ),
    data_case(
        "parquet-missing-column",
        lambda f: as_parquet(f, "forget10", lambda rows: [{"question": r["question"]} for r in rows]),
        "forget10.parquet: row 1: missing field 'answer'",
    ),
    data_case(
        "parquet-perturbed-not-a-list",
        lambda f: as_parquet(
            f,
            "retain_perturbed",
            lambda rows: [dict(r, perturbed_answer=r["perturbed_answer"][0]) for r in rows],
        ),
        "retain_perturbed.parquet: row 1: field 'perturbed_answer' must be a non-empty list of strings",
    ),
    # ---- model folders (model.name=<folder>)
    model_case("model-folder-without-config", {"README.md": "hi"}, "has no config.json", "allowed: a preset"),
    model_case(
        "model-config-not-json",
        {"config.json": "{model_type: llama"},
        "my-model/config.json: not readable JSON",
    ),
    model_case(
        "model-folder-without-tokenizer",
        {"config.json": LLAMA_CONFIG},
        "model.name: could not load the tokenizer of folder",
        "my-model",
        "needs the tokenizer files save_pretrained writes",
    ),
    model_case(
        "model-config-unknown-type",
        {"config.json": json.dumps({"model_type": "no-such-architecture"})},
        "my-model/config.json: model_type 'no-such-architecture' is not an architecture transformers knows",
        "allowed: a causal LM type",
        tokenizer=True,
    ),
    model_case(
        "model-folder-without-weights",
        {"config.json": LLAMA_CONFIG},
        "model.name: could not load the model of folder",
        "my-model",
        tokenizer=True,
    ),
    model_case(
        "model-safetensors-not-safetensors",
        {"config.json": LLAMA_CONFIG, "model.safetensors": "not a safetensors file"},
        "model.name: the weights of folder",
        "my-model' are not readable safetensors (Error while deserializing header: header too large); "
        "re-save the model with save_pretrained",
        tokenizer=True,
    ),
    model_case(
        "model-safetensors-truncated",
        {"config.json": LLAMA_CONFIG, "model.safetensors": "\x10" + "\x00" * 7 + '{"a": '},
        "my-model' are not readable safetensors (Error while deserializing header:",
        tokenizer=True,
    ),
    Case(
        "model-pickled-weights-no-torch-warning",
        lambda t, tofu: [*local(tofu), "--set", f"model.name={pickled_model(t)}"],
        ("hold pickled Python objects, which are never loaded",),
    ),
    Case(
        "model-hub-id-offline-no-retries",
        lambda t, tofu: [*local(tofu), "--set", "model.name=no-such-org/no-such-model"],
        (
            "model.name: could not load the tokenizer of hub id 'no-such-org/no-such-model'",
            "the hub is not reachable from here (offline), so only a cached copy could load",
        ),
    ),
    Case(
        "sweep-model-error-leaves-no-storage-folder",
        lambda t, tofu: sweep_yaml(
            t,
            run={
                "cache_dir": str(t / "cache"),
                "data": {"source": {"kind": "local", "path": str(tofu)}},
                "model": {"name": "gpt5"},
            },
        ),
        ("model.name: 'gpt5' is not a preset, an existing model folder or a hub id",),
        "sweep",
    ),
    Case(
        "rmu-layer-beyond-the-model",  # checked against the model's config before anything is trained
        lambda t, tofu: [*local(tofu), "--method", "rmu", "--set", "method.layer=64"],
        ("error: method.layer: 64 but the model has ", " decoder layers; allowed: 0 to "),
    ),
    Case(
        "sweep-rmu-layer-range-beyond-the-model",
        lambda t, _: sweep_yaml(
            t, search=search(methods=["rmu"], space={"rmu": {"method.layer": {"choices": [0, 64]}}})
        ),
        ("error: search.space.rmu.method.layer: 64 but the model has ", " decoder layers; allowed: 0 to "),
        "sweep",
    ),
    Case(
        "out-cannot-be-made",  # under a file: refused before anything is trained, even for root
        lambda t, tofu: [*local(tofu), "--out", str(_file(t) / "run")],
        ("--out: ", "/a-file/run is not writable (", "Not a directory"),
    ),
    Case(
        "model-name-not-a-preset",
        lambda t, tofu: [*local(tofu), "--set", "model.name=gpt5"],
        ("model.name: 'gpt5' is not a preset, an existing model folder or a hub id", "allowed:"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    tofu_template: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tofu = tmp_path / "tofu"
    shutil.copytree(tofu_template, tofu)
    cache = tmp_path / "cache"
    argv = case.setup(tmp_path, tofu)
    storage = tmp_path / "runs"
    before = sorted(storage.rglob("*")) if storage.exists() else []
    # The hub is asked for a connection first; here it answers nothing (a closed local port), so
    # offline mode is switched on and a hub id fails at once, without huggingface_hub's retries.
    import huggingface_hub.constants

    from raysimnpo.data import hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_probed", False)
    import datasets.config  # its copy of the flag is switched too; restored after the test

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)
    code = run.main([*argv, "--set", f"cache_dir={cache}"]) if case.entry == "run" else sweep.main(argv)
    err = capfd.readouterr().err.strip().splitlines()  # fd level: library warnings count too
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    for text in case.expected:
        assert text in err[0]
    assert not (cache / "prepared").exists()
    assert (sorted(storage.rglob("*")) if storage.exists() else []) == before
    assert not (tmp_path / "code-ran").exists()
