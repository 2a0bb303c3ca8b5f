"""Where TOFU rows come from: the Hugging Face hub, a local folder, or the seeded generator.

Every source yields the same thing for a split name: a list of dicts with the hub dataset's fields
(`question`, `answer`, and for `*_perturbed` splits `paraphrased_answer`, `perturbed_answer`,
`paraphrased_question`; DESIGN §4). Rows are validated on load, and every problem is one
`UserInputError` line that names the file (and row/line) and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ..cache import default_cache_dir
from ..config.base import Frozen
from ..errors import UserInputError
from .generators.tofu import GENERATOR_VERSION, TofuGeneratorConfig, generate_tofu_dataset

DEFAULT_HUB_ID = "locuslab/TOFU"
SPLIT_SUFFIXES = (".jsonl", ".json", ".parquet")
"""Looked up in this order; the first existing file is the split."""
GENERATED_SUBDIR = "tofu-generated"
GENERATOR_MANIFEST = ".generator.json"


class TofuSource(Frozen):
    """A TOFU data source. `kind="hub"` reads `hub_id` with `datasets.load_dataset(hub_id, split)`
    (TOFU names each split as a config); `kind="local"` reads `<path>/<split>.jsonl|.json|.parquet`;
    `kind="generated"` writes the `generator` dataset once into a cache folder keyed by a hash of
    the generator config and reads it as a local folder."""

    kind: Literal["hub", "local", "generated"] = "generated"
    hub_id: str = Field(default=DEFAULT_HUB_ID, min_length=1, description="hub dataset id, for kind=hub")
    path: str | None = Field(
        default=None, description="folder with <split>.jsonl/.json/.parquet, for kind=local"
    )
    generator: TofuGeneratorConfig = Field(
        default_factory=lambda: TofuGeneratorConfig(), description="for kind=generated"
    )

    @model_validator(mode="after")
    def _path_for_local(self) -> TofuSource:
        if self.kind == "local" and not self.path:
            raise ValueError("kind=local needs path: a folder with <split>.jsonl, .json or .parquet files")
        return self

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub dataset {self.hub_id}"
        if self.kind == "local":
            return f"folder {self.path}"
        return f"generated dataset (seed {self.generator.seed}, key {generator_key(self.generator)})"


# --------------------------------------------------------------------------------------------
# Field requirements per split
# --------------------------------------------------------------------------------------------


def is_perturbed_split(split: str) -> bool:
    return split.endswith("_perturbed")


def is_world_split(split: str) -> bool:
    """real_authors / world_facts (with or without _perturbed): no paraphrase, 3 perturbed answers."""
    return split.startswith(("real_authors", "world_facts"))


def required_fields(split: str) -> tuple[str, ...]:
    """The fields every row of `split` must have (TOFU's schema, DESIGN §4)."""
    if not is_perturbed_split(split):
        return ("question", "answer")
    if is_world_split(split):
        return ("question", "answer", "perturbed_answer")
    return ("question", "answer", "paraphrased_answer", "perturbed_answer")


_OPTIONAL_TEXT_FIELDS = (
    "paraphrased_question",
    "paraphrased_answer",
    "option1",
    "option2",
    "option3",
    "option4",
)


def validate_rows(
    rows: Sequence[dict[str, Any]], split: str, where: str, line_numbers: Sequence[int] | None = None
) -> None:
    """Check the required fields of every row: non-empty strings, and for `perturbed_answer` a
    non-empty list of non-empty strings of the same length in every row. `where` names the file."""
    if not rows:
        raise UserInputError(f"{where}: split {split!r} has no rows; a split needs at least one question")
    need = required_fields(split)
    n_perturbed: int | None = None
    for i, row in enumerate(rows):
        at = f"{where}: row {i + 1}" + (f" (line {line_numbers[i]})" if line_numbers is not None else "")
        if not isinstance(row, dict):
            raise UserInputError(f"{at}: expected a JSON object with fields {', '.join(need)}")
        for name in need:
            if name not in row or row[name] is None:
                raise UserInputError(f"{at}: missing field {name!r}; split {split!r} needs {', '.join(need)}")
        for name in ("question", "answer", *_OPTIONAL_TEXT_FIELDS):
            if name in row and (name in need or row[name] is not None):
                _check_text(row[name], f"{at}: field {name!r}")
        if "perturbed_answer" in need:
            value = row["perturbed_answer"]
            if not isinstance(value, list | tuple) or not value:
                raise UserInputError(f"{at}: field 'perturbed_answer' must be a non-empty list of strings")
            for j, text in enumerate(value):
                _check_text(text, f"{at}: field 'perturbed_answer'[{j}]")
            if n_perturbed is None:
                n_perturbed = len(value)
            elif len(value) != n_perturbed:
                raise UserInputError(
                    f"{at}: field 'perturbed_answer' has {len(value)} answers but row 1 has {n_perturbed}; "
                    "every row of a split needs the same number"
                )


def _check_text(value: Any, at: str) -> None:
    if not isinstance(value, str):
        raise UserInputError(f"{at} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserInputError(f"{at} is empty; it must be a non-empty string")


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def list_splits(folder: Path) -> list[str]:
    """Split names present in a folder (files with a known suffix, hidden files ignored)."""
    if not folder.is_dir():
        return []
    names = {
        p.name[: -len(s)]
        for p in folder.iterdir()
        for s in SPLIT_SUFFIXES
        if p.name.endswith(s) and p.is_file()
    }
    return sorted(n for n in names if n and not n.startswith((".", "_")))


def split_file(folder: Path, split: str) -> Path:
    """The file holding `split` in `folder`, or a UserInputError listing the splits found."""
    if not folder.is_dir():
        raise UserInputError(
            f"{folder}: data folder does not exist; expected a folder with <split>.jsonl files"
        )
    for suffix in SPLIT_SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    found = list_splits(folder)
    shown = ", ".join(found) if found else "none"
    raise UserInputError(
        f"{folder}: no file for split {split!r} (looked for {split}.jsonl, {split}.json, {split}.parquet); "
        f"splits found: {shown}"
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a JSON Lines file and their 1-based line numbers; blank lines are skipped."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserInputError(
                f"{path}: line {number}: invalid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise UserInputError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        lines.append(number)
    return rows, lines


def read_json(path: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """A `.json` file holding either a JSON array of objects or JSON Lines."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{path}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserInputError(
                f"{path}: element {i + 1} of the array is {type(row).__name__}; expected objects"
            )
    return data, None


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{path}: cannot read Parquet ({first})") from None


def load_local_split(folder: str | os.PathLike[str], split: str) -> list[dict[str, Any]]:
    """Rows of `split` from `<folder>/<split>.jsonl|.json|.parquet`, validated."""
    path = split_file(Path(folder), split)
    line_numbers: list[int] | None
    if path.suffix == ".jsonl":
        rows, line_numbers = read_jsonl(path)
    elif path.suffix == ".json":
        rows, line_numbers = read_json(path)
    else:
        rows, line_numbers = read_parquet(path), None
    validate_rows(rows, split, str(path), line_numbers)
    return rows


def load_hub_split(hub_id: str, split: str) -> list[dict[str, Any]]:
    """`datasets.load_dataset(hub_id, split)["train"]`: TOFU publishes each split as a config."""
    import datasets

    from .hub import prefer_offline_when_unreachable

    prefer_offline_when_unreachable()  # no retry storm when there is no network

    try:
        loaded = datasets.load_dataset(hub_id, split)
        train = loaded["train"]
    except Exception as exc:  # datasets raises many types (config missing, offline, auth, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserInputError(
            f"source.hub_id: cannot load split {split!r} of {hub_id!r} ({type(exc).__name__}: {first}); "
            "check the id and network, or use source.kind=local/generated"
        ) from None
    rows = [dict(row) for row in train]
    validate_rows(rows, split, f"{hub_id}:{split}")
    return rows


# --------------------------------------------------------------------------------------------
# Generated datasets (cached)
# --------------------------------------------------------------------------------------------


def config_hash(config: BaseModel, version: int) -> str:
    payload = {"version": version, "config": config.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def generated_folder(
    name: str,
    config: BaseModel,
    version: int,
    write: Callable[[Path], object],
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """`<cache>/<name>-generated/<hash of config and version>/`, written by `write(folder)` on first use
    (into a temporary sibling that is renamed into place, so concurrent trials never read half a set)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{name}-generated" / config_hash(config, version)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(staging)
        manifest = {"generator_version": version, "config": config.model_dump(mode="json")}
        (staging / GENERATOR_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def generator_key(config: TofuGeneratorConfig) -> str:
    """A short hash of the generator config and version: the name of its cache folder."""
    return config_hash(config, GENERATOR_VERSION)


def generated_dataset_dir(
    config: TofuGeneratorConfig, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The folder of the generated TOFU dataset for `config` (`generated_folder`)."""
    return generated_folder(
        "tofu", config, GENERATOR_VERSION, lambda folder: generate_tofu_dataset(folder, config), cache_dir
    )


def local_folder(source: TofuSource, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder a local or generated source reads from (None for the hub)."""
    if source.kind == "local":
        assert source.path is not None  # checked by the model
        return Path(source.path).expanduser()
    if source.kind == "generated":
        return generated_dataset_dir(source.generator, cache_dir)
    return None


def load_split(
    source: TofuSource | str | os.PathLike[str],
    split: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """The validated rows of one TOFU split. `source` is a `TofuSource`, or a path to a local folder.
    `cache_dir` holds generated datasets (default: `default_cache_dir()`)."""
    if not isinstance(source, TofuSource):
        return load_local_split(Path(source).expanduser(), split)
    if source.kind == "hub":
        return load_hub_split(source.hub_id, split)
    folder = local_folder(source, cache_dir)
    assert folder is not None
    return load_local_split(folder, split)
