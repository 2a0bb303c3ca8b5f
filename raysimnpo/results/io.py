"""Parquet results of a sweep: the `trials`, `metrics`, `examples`, `weights` and `relearn` tables
(DESIGN §6, §8).

Layout under a results root `<storage>/<sweep>/results/` (see `results_root`), hive-partitioned per
trial so that a trial only ever touches its own files::

    trials/trial_id=<id>/part-0.parquet      one row per trial: ids, method, hyperparameters, seed,
                                             status, error, timings, checkpoint, headline objectives
    metrics/trial_id=<id>/part-0.parquet     long format: stage, epoch, metric, value (stage "timing":
                                             wall seconds per trial phase)
    examples/trial_id=<id>/part-0.parquet    per-example statistics of every benchmark, from which each
                                             aggregate of §6 can be recomputed: TOFU's ℓ, |y|, P̃, truth
                                             ratio R, ROUGE-L; MUSE's generations, ROUGE-L F1, Min-K%;
                                             WMDP's per-choice log-likelihoods and predicted choice
    weights/trial_id=<id>/part-0.parquet     NPO / SimNPO only: each forget example's closed-form gradient
                                             weight (eq. 3 / eq. 5) and |y| per unlearning epoch
    relearn/trial_id=<id>/part-0.parquet     relearning attacks on the trial's checkpoint (paper Fig. A3):
                                             forget quality per attack, seed and relearning epoch

Every file carries the schema version twice: a `schema_version` int32 column (so a query over many
files can filter on it) and the Parquet key-value metadata entry `raysimnpo.schema_version`, which
`read_table` checks for every file before reading it. Files of an older version that this one
can still read (`READABLE_VERSIONS`) are upgraded on reading: version 1's `examples` (TOFU columns
only, all required) reads with the columns added in version 2 as nulls.

Writes are atomic per file and idempotent per trial (`write_trial_results`):

* Each file is serialised in memory first, so a failure while encoding leaves nothing behind.
* On filesystems with an atomic rename (local disks, HDFS) the bytes go to a hidden temporary name in
  the same folder (`.part-0.parquet.tmp-<uuid>`), which is then renamed over `part-0.parquet`; a reader
  sees the old file or the new one, never half of one. Leftover temporaries of a crashed writer start
  with "." and are ignored by `read_table`.
* Object stores (S3, GCS, Azure) have no atomic rename (pyarrow's `move` there is copy + delete), but an
  object only becomes visible once its single upload completes, so the bytes are written directly to the
  final key: a reader again sees the old object or the new one.
* A retried trial rewrites its own files (and removes a table it no longer has rows for), so
  nothing is ever appended twice. The `trials` file is removed first and written last: a trial has
  complete results exactly when its `trials` file exists (`trial_ids`).

All I/O goes through `pyarrow.fs`, so a root is a local path or any URI that
`pyarrow.fs.FileSystem.from_uri` accepts (`file:///...`, `s3://bucket/prefix`, `gs://...`).
This module is layer L1: pyarrow (and numpy for array inputs) only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import UserInputError, first_line
from .rows import Rows, _as_table
from .schema import (
    _ID_PATTERN,
    PART_NAME,
    PARTITION_KEY,
    READABLE_VERSIONS,
    SCHEMAS,
    TABLE_NAMES,
    VERSION_KEY,
    TableName,
    _schema_of_version,
    _upgrade,
)
from .storage import open_storage, write_atomically

_NO_RESULTS = "no results found (expected trials/, metrics/, examples/ written by python -m raysimnpo.sweep)"
_PARTITIONING = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    fs: pafs.FileSystem
    path: str  # path of the results root inside `fs`, no trailing "/"
    shown_prefix: str  # prepended to filesystem paths in messages ("s3://"; "" for local files)
    text: str  # the root as the caller gave it

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def show(self, path: str) -> str:
        return f"{self.shown_prefix}{path}"


def _locate(root: str | os.PathLike[str]) -> _Location:
    """A results root through the one resolver of locations, `storage.open_storage` (which also
    refuses credentials in a URI)."""
    text = os.fspath(root)
    storage = open_storage(text)
    prefix = f"{storage.uri.split('://', 1)[0]}://" if storage.remote else ""
    return _Location(storage.fs, storage.base.rstrip("/") or "/", prefix, text)


def results_root(storage: str | os.PathLike[str], sweep: str) -> str:
    """`<storage>/<sweep>/results`: where a sweep's tables live (storage: local path or URI)."""
    if not _ID_PATTERN.match(sweep):
        raise UserInputError(
            f"sweep: {sweep!r} is not a valid sweep name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return f"{os.fspath(storage).rstrip('/')}/{sweep}/results"


def _check_trial_id(trial_id: str) -> None:
    # A partition folder name: no "/", no "=" or "%" (hive decoding), and no leading "." or "_",
    # which pyarrow.dataset skips as hidden.
    if not isinstance(trial_id, str) or not _ID_PATTERN.match(trial_id):
        raise ValueError(
            f"trial_id: {trial_id!r} is not a valid trial id; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _part_path(location: _Location, name: TableName, trial_id: str) -> str:
    return location.join(name, f"{PARTITION_KEY}={trial_id}", PART_NAME)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _write_file(fs: pafs.FileSystem, path: str, table: pa.Table, compression: str = "zstd") -> None:
    """Write `table` to `path` so that readers see either the previous file or the whole new one."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    write_atomically(fs, path, sink.getvalue())


def write_parquet(table: pa.Table, location: str | os.PathLike[str], compression: str = "snappy") -> None:
    """One Parquet file at `location` (a local path or a filesystem URI), written like the results
    tables: a reader sees the previous file or the whole new one. Every Parquet file raysimnpo writes
    goes through here or `write_trial_results` / `write_relearn_results`."""
    text = os.fspath(location)
    if "://" in text:
        folder, name = text.rstrip("/").rsplit("/", 1)
    else:
        folder, name = os.path.split(os.path.abspath(os.path.expanduser(text)))
    where = _locate(folder)
    _write_file(where.fs, where.join(name), table, compression)


def _delete_if_exists(fs: pafs.FileSystem, path: str) -> None:
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def _check_rows_belong(name: str, table: pa.Table, trial_id: str, sweep: str) -> None:
    for column, expected in (("trial_id", trial_id), ("sweep", sweep)):
        others = sorted(set(table[column].to_pylist()) - {expected})
        if others:
            raise ValueError(
                f"{name}.{column}: rows for {others} in the results of trial {trial_id} ({expected!r})"
            )


def write_trial_results(
    root: str | os.PathLike[str],
    trial_id: str,
    *,
    trials: pa.Table | Rows,
    metrics: pa.Table | Rows | None = None,
    examples: pa.Table | Rows | None = None,
    weights: pa.Table | Rows | None = None,
) -> dict[TableName, str]:
    """Write (or rewrite) all results of one trial under `root`; returns the paths written per table.

    `trials` must be the trial's single row; `metrics` / `examples` / `weights` all its rows of those
    tables (None or empty: the trial has none, and a file left by an earlier attempt is removed). Each
    argument is a list of dicts (validated as by `trials_table` etc.) or a table those functions built.
    Order: the old `trials` file is removed, then the other tables are replaced, then `trials` is
    written, so a trial whose `trials` file exists has complete results. Every file is replaced atomically (see the
    module docstring); a retried trial therefore leaves exactly one copy of its rows.
    """
    _check_trial_id(trial_id)
    trials_rows = _as_table("trials", trials)
    if trials_rows.num_rows != 1:
        raise ValueError(f"trials: {trials_rows.num_rows} rows for trial {trial_id}; expected exactly one")
    sweep = trials_rows["sweep"][0].as_py()
    _check_rows_belong("trials", trials_rows, trial_id, sweep)
    others: dict[TableName, pa.Table | None] = {}
    pending: tuple[tuple[TableName, pa.Table | Rows | None], ...] = (
        ("metrics", metrics),
        ("examples", examples),
        ("weights", weights),
    )
    for name, value in pending:
        table = None if value is None else _as_table(name, value)
        if table is not None and table.num_rows == 0:
            table = None
        if table is not None:
            _check_rows_belong(name, table, trial_id, sweep)
        others[name] = table

    location = _locate(root)
    fs = location.fs
    written: dict[TableName, str] = {}
    _delete_if_exists(fs, _part_path(location, "trials", trial_id))
    for name, table in others.items():
        path = _part_path(location, name, trial_id)
        if table is None:
            _delete_if_exists(fs, path)
        else:
            _write_file(fs, path, table)
            written[name] = location.show(path)
    path = _part_path(location, "trials", trial_id)
    _write_file(fs, path, trials_rows)
    written["trials"] = location.show(path)
    return written


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _schema_difference(found: pa.Schema, expected: pa.Schema) -> str:
    missing = [n for n in expected.names if n not in found.names]
    extra = [n for n in found.names if n not in expected.names]
    changed = [
        f"{f.name} is {found.field(f.name).type}{'' if found.field(f.name).nullable else ' not null'}"
        for f in expected
        if f.name in found.names and not found.field(f.name).equals(f)
    ]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if changed:
        parts.append(", ".join(changed))
    if not parts and found.names != expected.names:
        parts.append("columns in a different order")
    return "; ".join(parts)


def _read_fragment(fragment: ds.ParquetFileFragment, name: TableName, location: _Location) -> pa.Table | None:
    """One file's rows after checking its version, columns and partition; None if it vanished."""
    shown = location.show(fragment.path)
    unreadable = (pa.ArrowException, OSError)
    try:
        found = fragment.physical_schema
    except FileNotFoundError:
        return None  # removed by a concurrent rewrite of that trial after the folder was listed
    except unreadable as exc:
        raise UserInputError(
            f"{shown}: not a readable Parquet file ({first_line(exc)}); delete it and re-run that trial"
        ) from exc
    version = (found.metadata or {}).get(VERSION_KEY.encode())
    readable = ", ".join(map(str, READABLE_VERSIONS))
    if version is None:
        raise UserInputError(
            f"{shown}: no results schema version in its metadata ({VERSION_KEY}); "
            f"this raysimnpo reads versions {readable}"
        )
    if version.decode(errors="replace") not in {str(v) for v in READABLE_VERSIONS}:
        raise UserInputError(
            f"{shown}: results schema version {version.decode(errors='replace')} is not supported; "
            f"this raysimnpo reads versions {readable}"
        )
    schema = SCHEMAS[name]
    written = _schema_of_version(name, int(version))
    if not found.equals(written, check_metadata=False):
        raise UserInputError(
            f"{shown}: columns do not match results schema version {int(version)} "
            f"({_schema_difference(found, written)}); delete it and re-run that trial"
        )
    try:
        table = fragment.to_table(schema=found)
    except FileNotFoundError:
        return None
    except unreadable as exc:
        raise UserInputError(
            f"{shown}: not a readable Parquet file ({first_line(exc)}); delete it and re-run that trial"
        ) from exc
    partition = ds.get_partition_keys(fragment.partition_expression).get(PARTITION_KEY)
    if partition is not None:
        others = sorted(set(table["trial_id"].to_pylist()) - {partition})
        if others:
            raise UserInputError(
                f"{shown}: holds rows of trial(s) {others} in the folder of trial {partition}; "
                "each trial's rows belong in its own trial_id=<id> folder"
            )
    if not written.equals(schema, check_metadata=False):
        return _upgrade(table, schema)
    return table.cast(schema)  # same columns and types; the canonical names of list items and metadata


def _require_results(location: _Location) -> None:
    if location.fs.get_file_info(location.join("trials")).type != pafs.FileType.Directory:
        raise UserInputError(f"{location.text}: {_NO_RESULTS}")


def read_table(root: str | os.PathLike[str], name: str) -> pa.Table:
    """All rows of one results table (every trial partition) as a pyarrow Table with its schema.

    Hidden files (names starting with "." or "_", e.g. temporaries of an interrupted write) are
    ignored. Raises UserInputError when `root` has no `trials/` folder, when a file is not readable
    Parquet, or when its schema version or columns are not those of this version. A table folder that
    does not exist or holds no files gives zero rows.
    """
    if name not in SCHEMAS:
        raise UserInputError(f"table: {name!r} is not a results table; allowed {list(TABLE_NAMES)}")
    schema = SCHEMAS[cast(TableName, name)]
    location = _locate(root)
    _require_results(location)
    folder = location.join(name)
    if location.fs.get_file_info(folder).type != pafs.FileType.Directory:
        return schema.empty_table()
    # schema= given so that discovery does not open any file (errors are reported per file below).
    dataset = ds.dataset(
        folder,
        schema=schema,
        format="parquet",
        filesystem=location.fs,
        partitioning=_PARTITIONING,
        ignore_prefixes=[".", "_"],
    )
    tables = []
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        table = _read_fragment(fragment, cast(TableName, name), location)
        if table is not None:
            tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def trial_ids(root: str | os.PathLike[str]) -> set[str]:
    """Ids of the trials with complete results under `root`: those whose `trials` file exists.

    Does not open the files. A root without results (e.g. a sweep that has not finished a trial yet)
    gives an empty set.
    """
    location = _locate(root)
    folder = location.join("trials")
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=True)
    ids: set[str] = set()
    for info in location.fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.startswith(folder + "/"):
            continue
        parts = info.path[len(folder) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == PART_NAME and parts[0].startswith(f"{PARTITION_KEY}="):
            ids.add(parts[0][len(PARTITION_KEY) + 1 :])
    return ids


def write_relearn_results(root: str | os.PathLike[str], trial_id: str, rows: pa.Table | Rows) -> str:
    """Write (or rewrite, atomically) the relearning attacks of one trial that has results, or of an
    epoch candidate `<trial>.epoch-<e>` of one (`epoch_candidates`)."""
    _check_trial_id(trial_id)
    table = _as_table("relearn", rows)
    if table.num_rows == 0:
        raise ValueError(f"relearn: no rows for trial {trial_id}")
    _check_rows_belong("relearn", table, trial_id, table["sweep"][0].as_py())
    location = _locate(root)
    if trial_id.split(EPOCH_MARK)[0] not in trial_ids(root):
        raise ValueError(f"relearn: trial {trial_id} has no results under {location.text}")
    path = _part_path(location, "relearn", trial_id)
    _write_file(location.fs, path, table)
    return location.show(path)


def read_trial_row(root: str | os.PathLike[str], trial_id: str) -> dict[str, Any] | None:
    """The `trials` row of one trial (reading only its own file), or None when it has none yet."""
    _check_trial_id(trial_id)
    location = _locate(root)
    path = _part_path(location, "trials", trial_id)
    if location.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    fragment = ds.dataset(path, format="parquet", filesystem=location.fs).get_fragments()
    table = _read_fragment(next(iter(fragment)), "trials", location)
    return None if table is None or table.num_rows == 0 else table.to_pylist()[0]


def read_trial_rows(root: str | os.PathLike[str], name: str, trial_id: str) -> list[dict[str, Any]]:
    """The rows of one trial in table `name` (reading only that trial's file); [] when it has none."""
    _check_trial_id(trial_id)
    location = _locate(root)
    path = _part_path(location, cast(TableName, name), trial_id)
    if location.fs.get_file_info(path).type != pafs.FileType.File:
        return []
    fragment = ds.dataset(path, format="parquet", filesystem=location.fs).get_fragments()
    table = _read_fragment(next(iter(fragment)), cast(TableName, name), location)
    return [] if table is None else table.to_pylist()


EPOCH_MARK = ".epoch-"
"""An epoch candidate's id: `<trial id>.epoch-<epoch>` (`epoch_candidates`), named like the folder of
its kept weights and a valid trial id of its own (relearning attacks write rows under it)."""


def epoch_candidates(
    trials: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]], objectives: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every evaluated epoch of a completed trial as a candidate of its own (`evaluation.every_epoch`):
    for each epoch before the trial's last with every objective in its `epoch` metrics rows, a trials
    row `<trial id>.epoch-<epoch>` (the trial's row with `epochs` set to that epoch and the checkpoint of that
    epoch's kept weights, `<checkpoint>.epoch-<e>`) and its `final` metrics rows (the epoch's). The
    last epoch is the trial itself. Per-example rows exist only for the trial's final model.

    Returns (trial rows, metric rows) to add to the tables read from disk: fronts, the Table-2
    selection and the best-model export then see every (trial, epoch)."""
    by_trial = {
        t["trial_id"]: t for t in trials if t.get("kind") == "trial" and t.get("status") == "completed"
    }
    epochs: dict[tuple[str, int], dict[str, float]] = {}
    for row in metrics:
        if row["stage"] == "epoch" and row["trial_id"] in by_trial and row["epoch"] is not None:
            epochs.setdefault((row["trial_id"], int(row["epoch"])), {})[row["metric"]] = row["value"]
    last = {trial_id: max(e for t, e in epochs if t == trial_id) for trial_id, _ in epochs}
    new_trials: list[dict[str, Any]] = []
    new_metrics: list[dict[str, Any]] = []
    for (trial_id, epoch), values in sorted(epochs.items()):
        if epoch == last[trial_id] or not all(m in values for m in objectives):
            continue
        trial = by_trial[trial_id]
        candidate = f"{trial_id}{EPOCH_MARK}{epoch}"
        checkpoint = trial.get("checkpoint")
        params = json.loads(trial["params_json"]) if trial.get("params_json") else {}
        params["evaluated_epoch"] = epoch  # another model than the trial's final one: another config
        new_trials.append(
            {
                **trial,
                "trial_id": candidate,
                "params_json": json.dumps(params, sort_keys=True),
                "epochs": epoch,
                "checkpoint": None if checkpoint is None else f"{checkpoint}{EPOCH_MARK}{epoch}",
                **{k: values[k] for k in ("forget_quality", "model_utility") if k in trial and k in values},
            }
        )
        new_metrics += [
            {
                "sweep": trial["sweep"],
                "trial_id": candidate,
                "stage": "final",
                "epoch": None,
                "metric": name,
                "value": value,
            }
            for name, value in values.items()
        ]
    return new_trials, new_metrics
