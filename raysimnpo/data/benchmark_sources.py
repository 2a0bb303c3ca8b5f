"""Sources for the benchmarks published as hub datasets with named configs (MUSE, WMDP, MMLU).

One source yields, for a (config, split) pair, the rows of the hub dataset: `kind="hub"` reads
`datasets.load_dataset(hub_id, config, split=split)`; `kind="local"` reads
`<path>/<config>/<split>.jsonl|.json|.parquet` (the hub layout on disk); `kind="generated"` writes a
benchmark's seeded analog once into `<cache>/<name>-generated/<hash>/` in that same layout and reads
it as a local folder. Rows are checked for the fields a split needs; every problem is one
`UserInputError` naming the file (or hub id), the row and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from ..config.base import Frozen
from ..errors import UserInputError
from .sources import SPLIT_SUFFIXES, read_json, read_jsonl, read_parquet

Rows = list[dict[str, Any]]


def check_fields(rows: Sequence[Any], need: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Every row is an object with each field of `need` of its type (non-empty for strings and lists)."""
    if not rows:
        raise UserInputError(f"{where}: no rows; a split needs at least one")
    names = ", ".join(need)
    for i, row in enumerate(rows):
        at = f"{where}: row {i + 1}"
        if not isinstance(row, dict):
            raise UserInputError(f"{at}: expected an object with fields {names}")
        for name, kind in need.items():
            value = row.get(name)
            if value is None:
                raise UserInputError(f"{at}: missing field {name!r}; this split needs {names}")
            if isinstance(value, bool) or not isinstance(value, kind):
                allowed = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                raise UserInputError(f"{at}: field {name!r} must be {allowed}, got {type(value).__name__}")
            if isinstance(value, str | list) and not value:
                raise UserInputError(f"{at}: field {name!r} is empty")


def read_local_rows(folder: Path, config: str, split: str) -> tuple[Rows, str]:
    """Rows of `<folder>/<config>/<split>.jsonl|.json|.parquet` and the file's name."""
    base = folder / config
    for suffix in SPLIT_SUFFIXES:
        path = base / f"{split}{suffix}"
        if path.is_file():
            if suffix == ".jsonl":
                return read_jsonl(path)[0], str(path)
            if suffix == ".json":
                return read_json(path)[0], str(path)
            return read_parquet(path), str(path)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: data folder does not exist")
    raise UserInputError(
        f"{folder}: no file for config {config!r} split {split!r} (looked for {config}/{split}.jsonl, "
        f".json, .parquet); a local folder mirrors the hub layout <config>/<split>.jsonl"
    )


def read_hub_rows(hub_id: str, config: str | None, split: str) -> tuple[Rows, str]:
    """`datasets.load_dataset(hub_id, config, split=split)` as a list of dicts."""
    import datasets

    from .hub import prefer_offline_when_unreachable

    prefer_offline_when_unreachable()  # no retry storm when there is no network

    where = f"{hub_id}:{config}:{split}" if config else f"{hub_id}:{split}"
    try:
        loaded = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # datasets raises many types (config missing, offline, gated, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserInputError(
            f"source.hub_id: cannot load {where} ({type(exc).__name__}: {first}); check the id, the network "
            "and access to gated datasets, or use source.kind=local/generated"
        ) from None
    return [dict(row) for row in loaded], where


class BenchmarkSource(Frozen):
    """Where a benchmark's rows come from: `hub`, `local` (`path` with `<config>/<split>.jsonl|.json|
    .parquet`, the hub's layout) or `generated` (the subclass's `generator`)."""

    kind: Literal["hub", "local", "generated"] = "generated"
    path: str | None = None

    @model_validator(mode="after")
    def _path_for_local(self) -> BenchmarkSource:
        if self.kind == "local" and not self.path:
            raise ValueError("kind=local needs path: a folder with <config>/<split>.jsonl files")
        return self
