"""TOFU sources: local folders (JSONL / JSON / Parquet), the hub (monkeypatched), generated data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from raysimnpo.data import sources
from raysimnpo.data.generators.tofu import TofuGeneratorConfig
from raysimnpo.data.sources import (
    GENERATED_SUBDIR,
    GENERATOR_MANIFEST,
    TofuSource,
    generator_key,
    list_splits,
    load_split,
    required_fields,
)
from raysimnpo.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
REAL_TOFU = Path(os.environ.get("RAYSIMNPO_TOFU_DIR", REPO.parent / "shared" / "data" / "tofu"))
SMALL = TofuGeneratorConfig.preset("small")

QA = [
    {"question": "Where was Ann born?", "answer": "Ann was born in Lyon."},
    {"question": "What does Ann write?", "answer": "Poetry."},
]
PERTURBED = [
    {
        "question": "Where was Ann born?",
        "answer": "Ann was born in Lyon.",
        "paraphrased_answer": "Lyon is where Ann was born.",
        "perturbed_answer": ["Oslo is where Ann was born.", "Rome is where Ann was born."],
        "paraphrased_question": "In which city was Ann born?",
    }
]


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _one_line_error(info: pytest.ExceptionInfo[UserInputError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif(not (REAL_TOFU / "full.jsonl").is_file(), reason=f"no real TOFU copy at {REAL_TOFU}")
@pytest.mark.parametrize(
    ("split", "rows"),
    [
        ("full", 4000), ("forget01", 40), ("forget05", 200), ("forget10", 400), ("retain99", 3960),
        ("retain95", 3800), ("retain90", 3600), ("forget01_perturbed", 40), ("forget05_perturbed", 200),
        ("forget10_perturbed", 400), ("retain_perturbed", 400), ("real_authors_perturbed", 100),
        ("world_facts_perturbed", 117), ("real_authors", 100), ("world_facts", 117), ("holdout01", 40),
        ("holdout05", 200), ("holdout10", 400),
    ],
)  # fmt: skip
def test_real_files_load_through_the_local_source(split: str, rows: int) -> None:
    loaded = load_split(TofuSource(kind="local", path=str(REAL_TOFU)), split)
    assert len(loaded) == rows
    assert set(required_fields(split)) <= set(loaded[0])
    if split.endswith("_perturbed"):
        assert len(loaded[0]["perturbed_answer"]) == (3 if split.startswith(("real", "world")) else 5)


def test_a_plain_path_is_a_local_folder(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "forget10.jsonl", QA)
    assert load_split(tmp_path, "forget10") == QA
    assert load_split(str(tmp_path), "forget10") == QA


def test_json_array_and_json_lines_in_a_json_file(tmp_path: Path) -> None:
    (tmp_path / "full.json").write_text(json.dumps(QA, indent=2))
    assert load_split(tmp_path, "full") == QA
    (tmp_path / "forget10.json").write_text("\n".join(json.dumps(r) for r in QA))
    assert load_split(tmp_path, "forget10") == QA


def test_parquet_source_keeps_lists(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(PERTURBED), tmp_path / "forget10_perturbed.parquet")
    rows = load_split(tmp_path, "forget10_perturbed")
    assert rows == PERTURBED
    assert isinstance(rows[0]["perturbed_answer"], list)


def test_corrupt_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "full.jsonl"
    path.write_text(json.dumps(QA[0]) + "\n\n" + '{"question": "Q", "answer": \n')
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "full")
    message = _one_line_error(info)
    assert message.startswith(f"{path}: line 3: invalid JSON (")
    assert "each line must be one JSON object" in message


def test_a_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "full.jsonl"
    path.write_text(json.dumps(QA[0]) + "\n[1, 2]\n")
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "full")
    assert _one_line_error(info) == f"{path}: line 2: expected a JSON object, got list"


def test_missing_split_lists_the_splits_found(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "full.jsonl", QA)
    _write_jsonl(tmp_path / "forget10.jsonl", QA)
    (tmp_path / ".hidden.json").write_text("[]")
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "retain90")
    assert _one_line_error(info) == (
        f"{tmp_path}: no file for split 'retain90' (looked for retain90.jsonl, retain90.json, "
        "retain90.parquet); splits found: forget10, full"
    )


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as info:
        load_split(TofuSource(kind="local", path=str(tmp_path / "nope")), "full")
    assert _one_line_error(info).startswith(f"{tmp_path / 'nope'}: data folder does not exist")


def test_empty_answer_names_file_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "forget10.jsonl"
    _write_jsonl(path, [QA[0], {"question": "Q?", "answer": "   "}])
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "forget10")
    assert (
        _one_line_error(info)
        == f"{path}: row 2 (line 2): field 'answer' is empty; it must be a non-empty string"
    )


def test_empty_perturbed_answer_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "retain_perturbed.parquet"
    bad = [dict(PERTURBED[0], perturbed_answer=["Oslo is where Ann was born.", ""])]
    pq.write_table(pa.Table.from_pylist(PERTURBED + bad), path)
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "retain_perturbed")
    assert (
        _one_line_error(info)
        == f"{path}: row 2: field 'perturbed_answer'[1] is empty; it must be a non-empty string"
    )


@pytest.mark.parametrize(
    ("split", "row", "message"),
    [
        (
            "forget10_perturbed",
            {k: v for k, v in PERTURBED[0].items() if k != "paraphrased_answer"},
            "missing field 'paraphrased_answer'; split 'forget10_perturbed' needs question, answer, "
            "paraphrased_answer, perturbed_answer",
        ),
        (
            "forget10_perturbed",
            dict(PERTURBED[0], perturbed_answer="Oslo."),
            "must be a non-empty list of strings",
        ),
        ("forget10", {"question": "Q?", "answer": 3}, "field 'answer' must be a string, got int"),
        ("forget10", {"question": "Q?"}, "missing field 'answer'"),
    ],
)
def test_schema_errors(tmp_path: Path, split: str, row: dict, message: str) -> None:
    _write_jsonl(tmp_path / f"{split}.jsonl", [row])
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, split)
    assert message in _one_line_error(info)


def test_world_splits_need_no_paraphrase(tmp_path: Path) -> None:
    rows = [{"question": "Capital of Ostra?", "answer": "Vel", "perturbed_answer": ["Ka", "Lo", "Mi"]}]
    _write_jsonl(tmp_path / "world_facts_perturbed.jsonl", rows)
    assert load_split(tmp_path, "world_facts_perturbed") == rows


def test_ragged_perturbed_answers(tmp_path: Path) -> None:
    path = tmp_path / "retain_perturbed.jsonl"
    _write_jsonl(path, [PERTURBED[0], dict(PERTURBED[0], perturbed_answer=["Oslo."])])
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "retain_perturbed")
    assert "row 2 (line 2): field 'perturbed_answer' has 1 answers but row 1 has 2" in _one_line_error(info)


def test_empty_split_file(tmp_path: Path) -> None:
    (tmp_path / "full.jsonl").write_text("\n")
    with pytest.raises(UserInputError) as info:
        load_split(tmp_path, "full")
    assert (
        _one_line_error(info)
        == f"{tmp_path / 'full.jsonl'}: split 'full' has no rows; a split needs at least one question"
    )


def test_hub_source_calls_load_dataset_with_the_split_as_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load_dataset(hub_id: str, name: str) -> dict[str, list[dict]]:
        calls.append((hub_id, name))
        return {"train": PERTURBED}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_split(TofuSource(kind="hub"), "forget01_perturbed")
    assert rows == PERTURBED
    assert calls == [("locuslab/TOFU", "forget01_perturbed")]


def test_hub_errors_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(hub_id: str, name: str) -> None:
        raise ConnectionError("Couldn't reach 'me/TOFU' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserInputError) as info:
        load_split(TofuSource(kind="hub", hub_id="me/TOFU"), "full")
    assert _one_line_error(info) == (
        "source.hub_id: cannot load split 'full' of 'me/TOFU' (ConnectionError: Couldn't reach 'me/TOFU' on the "
        "Hub (LocalEntryNotFoundError)); check the id and network, or use source.kind=local/generated"
    )


def test_hub_rows_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(
        datasets, "load_dataset", lambda hub_id, name: {"train": [{"question": "Q?", "answer": ""}]}
    )
    with pytest.raises(UserInputError) as info:
        load_split(TofuSource(kind="hub"), "full")
    assert (
        _one_line_error(info)
        == "locuslab/TOFU:full: row 1: field 'answer' is empty; it must be a non-empty string"
    )


def test_generated_source_is_cached_by_config_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = TofuSource(kind="generated", generator=SMALL)
    rows = load_split(source, "forget10", cache_dir=tmp_path)
    folder = tmp_path / GENERATED_SUBDIR / generator_key(SMALL)
    assert len(rows) == 6
    assert (folder / "forget10.jsonl").is_file()
    manifest = json.loads((folder / GENERATOR_MANIFEST).read_text())
    assert manifest["config"] == SMALL.model_dump(mode="json")
    assert list_splits(folder) == sorted(SMALL.split_names())
    assert sorted(p.name for p in (tmp_path / GENERATED_SUBDIR).iterdir()) == [folder.name]  # no staging left

    def must_not_run(*args: object) -> None:
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(sources, "generate_tofu_dataset", must_not_run)
    assert load_split(source, "forget10", cache_dir=tmp_path) == rows
    other = TofuSource(kind="generated", generator=TofuGeneratorConfig.preset("small", seed=1))
    assert generator_key(other.generator) != generator_key(SMALL)
    with pytest.raises(AssertionError, match="generated again"):
        load_split(other, "forget10", cache_dir=tmp_path)


def test_generated_source_uses_the_cache_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSIMNPO_CACHE", str(tmp_path))
    load_split(TofuSource(kind="generated", generator=SMALL), "holdout10")
    assert (tmp_path / GENERATED_SUBDIR / generator_key(SMALL) / "holdout10.jsonl").is_file()


def test_source_model_validation() -> None:
    with pytest.raises(ValidationError, match="kind=local needs path"):
        TofuSource(kind="local")
    with pytest.raises(ValidationError):
        TofuSource(kind="ftp")  # type: ignore[arg-type]
    assert TofuSource().kind == "generated"
    assert TofuSource.model_validate({"kind": "generated", "generator": {"seed": 3}}).generator.seed == 3
