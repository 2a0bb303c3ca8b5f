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

import contextlib
import json
import math
import numbers
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import UserInputError, first_line

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
VERSION_KEY = "raysimnpo.schema_version"
PART_NAME = "part-0.parquet"
PARTITION_KEY = "trial_id"

TableName = Literal["trials", "metrics", "examples", "weights", "relearn"]
TABLE_NAMES: tuple[TableName, ...] = ("trials", "metrics", "examples", "weights", "relearn")
RELEARN_ATTACKS = ("shortest", "random")
TRIAL_KINDS = ("trial", "original", "retrain")
TRIAL_STATUSES = ("completed", "failed")
METRIC_STAGES = ("final", "epoch", "relearn", "timing")
# Hyperparameters with their own `trials` column; all of them are also in params_json.
FLAT_HYPERPARAMETERS = ("beta", "gamma", "retain_weight", "alpha", "learning_rate", "epochs", "batch_size")

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Filesystems (pyarrow `type_name`) whose `move` is an atomic rename that replaces the target.
_ATOMIC_RENAME = frozenset({"local", "hdfs"})
_NO_RESULTS = "no results found (expected trials/, metrics/, examples/ written by python -m raysimnpo.sweep)"


def _schema(*fields: tuple[str, pa.DataType, bool], version: int = SCHEMA_VERSION) -> pa.Schema:
    """A table schema: `schema_version` first, then (name, type, nullable) fields, version metadata."""
    columns = [pa.field("schema_version", pa.int32(), nullable=False)]
    columns += [pa.field(name, dtype, nullable=nullable) for name, dtype, nullable in fields]
    return pa.schema(columns, metadata={VERSION_KEY: str(version)})


_REQUIRED, _NULLABLE = False, True

TRIALS_SCHEMA = _schema(
    ("sweep", pa.string(), _REQUIRED),
    ("trial_id", pa.string(), _REQUIRED),
    ("kind", pa.string(), _REQUIRED),
    ("method", pa.string(), _REQUIRED),
    ("params_json", pa.string(), _REQUIRED),
    ("beta", pa.float64(), _NULLABLE),
    ("gamma", pa.float64(), _NULLABLE),
    ("retain_weight", pa.float64(), _NULLABLE),
    ("alpha", pa.float64(), _NULLABLE),
    ("learning_rate", pa.float64(), _NULLABLE),
    ("epochs", pa.int32(), _NULLABLE),
    ("batch_size", pa.int32(), _NULLABLE),
    ("seed", pa.int64(), _REQUIRED),
    ("status", pa.string(), _REQUIRED),
    ("error", pa.string(), _NULLABLE),
    ("started_at", _TIMESTAMP, _REQUIRED),
    ("finished_at", _TIMESTAMP, _REQUIRED),
    ("train_seconds", pa.float64(), _NULLABLE),
    ("eval_seconds", pa.float64(), _NULLABLE),
    ("total_seconds", pa.float64(), _REQUIRED),
    ("checkpoint", pa.string(), _NULLABLE),
    ("forget_quality", pa.float64(), _NULLABLE),
    ("model_utility", pa.float64(), _NULLABLE),
)

METRICS_SCHEMA = _schema(
    ("sweep", pa.string(), _REQUIRED),
    ("trial_id", pa.string(), _REQUIRED),
    ("stage", pa.string(), _REQUIRED),
    ("epoch", pa.int32(), _NULLABLE),
    ("metric", pa.string(), _REQUIRED),
    ("value", pa.float64(), _REQUIRED),
)

_TOFU_EXAMPLE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("question", pa.string()),
    ("answer", pa.string()),
    ("answer_tokens", pa.int32()),
    ("answer_nll", pa.float64()),
    ("reference_nll", pa.float64()),
    ("reference_tokens", pa.int32()),
    # "element": the item name Parquet's list encoding uses, so that a read-back schema is identical.
    ("perturbed_nll", pa.list_(pa.field("element", pa.float64()))),
    ("perturbed_tokens", pa.list_(pa.field("element", pa.int32()))),
    ("prob", pa.float64()),
    ("truth_ratio", pa.float64()),
)
_KEY_FIELDS = (("sweep", pa.string(), _REQUIRED), ("trial_id", pa.string(), _REQUIRED))
EXAMPLES_SCHEMA_V1 = _schema(
    *_KEY_FIELDS,
    ("split", pa.string(), _REQUIRED),
    ("index", pa.int32(), _REQUIRED),
    *((name, dtype, _REQUIRED) for name, dtype in _TOFU_EXAMPLE_FIELDS),
    ("generation", pa.string(), _NULLABLE),
    ("rouge_l", pa.float64(), _NULLABLE),
    version=1,
)
# Version 2: every benchmark's rows. A row fills the columns of its benchmark and leaves the others
# null: TOFU the version-1 columns; MUSE prompt / reference / generation with rouge_l_f1 (VerbMem,
# KnowMem) or min_k_score / n_tokens (PrivLeak); WMDP question, answer_index, predicted, choice_loglik.
EXAMPLES_SCHEMA = _schema(
    *_KEY_FIELDS,
    ("split", pa.string(), _REQUIRED),
    ("index", pa.int32(), _REQUIRED),
    *((name, dtype, _NULLABLE) for name, dtype in _TOFU_EXAMPLE_FIELDS),
    ("generation", pa.string(), _NULLABLE),
    ("rouge_l", pa.float64(), _NULLABLE),
    ("prompt", pa.string(), _NULLABLE),
    ("reference", pa.string(), _NULLABLE),
    ("rouge_l_f1", pa.float64(), _NULLABLE),
    ("min_k_score", pa.float64(), _NULLABLE),
    ("n_tokens", pa.int32(), _NULLABLE),
    ("answer_index", pa.int32(), _NULLABLE),
    ("predicted", pa.int32(), _NULLABLE),
    ("choice_loglik", pa.list_(pa.field("element", pa.float64())), _NULLABLE),
)

# Added after version 1 was released, as a new table: a run written without it reads as zero rows.
WEIGHTS_SCHEMA = _schema(
    ("sweep", pa.string(), _REQUIRED),
    ("trial_id", pa.string(), _REQUIRED),
    ("epoch", pa.int32(), _REQUIRED),
    ("index", pa.int32(), _REQUIRED),
    ("weight", pa.float64(), _REQUIRED),
    ("answer_tokens", pa.int32(), _REQUIRED),
)

# Added after version 1 as a new table, like `weights`. Epoch 0 is the unlearned model before relearning.
RELEARN_SCHEMA = _schema(
    ("sweep", pa.string(), _REQUIRED),
    ("trial_id", pa.string(), _REQUIRED),
    ("method", pa.string(), _REQUIRED),
    ("attack", pa.string(), _REQUIRED),
    ("seed", pa.int32(), _REQUIRED),
    ("relearn_examples", pa.int32(), _REQUIRED),
    ("epoch", pa.int32(), _REQUIRED),
    ("forget_quality", pa.float64(), _REQUIRED),
    ("forget_quality_ks_statistic", pa.float64(), _REQUIRED),
    ("forget_prob", pa.float64(), _REQUIRED),
    ("forget_truth_ratio", pa.float64(), _REQUIRED),
)

SCHEMAS: dict[TableName, pa.Schema] = {
    "trials": TRIALS_SCHEMA,
    "metrics": METRICS_SCHEMA,
    "examples": EXAMPLES_SCHEMA,
    "weights": WEIGHTS_SCHEMA,
    "relearn": RELEARN_SCHEMA,
}


def _schema_of_version(name: TableName, version: int) -> pa.Schema:
    """The columns table `name` had in `version` (only `examples` changed, in version 2)."""
    if version == 1 and name == "examples":
        return EXAMPLES_SCHEMA_V1
    return SCHEMAS[name].with_metadata({VERSION_KEY: str(version)})


def _upgrade(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table read from an older version, with the columns it lacks as nulls, in `schema`'s form."""
    columns = [
        table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, type=f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


_PARTITIONING = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")

Rows = Iterable[Mapping[str, Any]]


# --------------------------------------------------------------------------------------------------
# Building tables from rows
# --------------------------------------------------------------------------------------------------


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Integral):
        return True
    # Token counts often arrive as float arrays (scoring returns |y| as float64): accept 12.0, not 12.5.
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _check_scalar(dtype: pa.DataType, value: Any) -> str | None:
    """None when `value` fits `dtype`, else a short description of what was expected."""
    if pa.types.is_string(dtype):
        return None if isinstance(value, str) else "a string"
    if pa.types.is_integer(dtype):
        return None if _is_integer(value) else "an integer"
    if pa.types.is_floating(dtype):
        return None if _is_real(value) else "a number"
    if pa.types.is_timestamp(dtype):
        if isinstance(value, datetime) and value.utcoffset() is not None:
            return None
        return "a timezone-aware datetime (e.g. datetime.now(timezone.utc))"
    if pa.types.is_list(dtype):
        if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
            return "a list"
        if isinstance(value, np.ndarray) and value.ndim != 1:
            return "a 1-D list"
        item = dtype.value_type
        for element in value:
            if element is None or _check_scalar(item, element) is not None:
                return f"a list of {'integers' if pa.types.is_integer(item) else 'numbers'}"
        return None
    raise AssertionError(f"no check for {dtype}")  # pragma: no cover - schemas use only the types above


def _to_array(name: str, field: pa.Field, values: list[Any]) -> pa.Array:
    for i, value in enumerate(values):
        if value is None:
            if not field.nullable:
                raise ValueError(f"{name}.{field.name}: row {i} is null; the column is required")
            continue
        expected = _check_scalar(field.type, value)
        if expected is not None:
            raise ValueError(f"{name}.{field.name}: row {i} is {value!r}; expected {expected}")
    if pa.types.is_integer(field.type):
        values = [None if v is None else int(v) for v in values]
    elif pa.types.is_list(field.type) and pa.types.is_integer(field.type.value_type):
        values = [None if v is None else [int(x) for x in v] for v in values]
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise ValueError(f"{name}.{field.name}: {first_line(exc)}") from exc


def _build(name: TableName, rows: Rows) -> pa.Table:
    """Validate `rows` (one dict per row) against the table's schema and return the typed table.

    Every required (non-nullable) column must be present in every row; nullable columns may be left
    out (null). `schema_version` is filled in. Unknown keys are rejected so that a misspelt column is
    not silently dropped.
    """
    schema = SCHEMAS[name]
    rows = list(rows)
    known = set(schema.names)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{name}: row {i} is a {type(row).__name__}; expected a dict of column values")
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(
                f"{name}: row {i} has unknown column(s) {unknown}; the columns are {schema.names}"
            )
        version = row.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{name}.schema_version: row {i} is {version!r}; this raysimnpo writes {SCHEMA_VERSION}"
            )
    columns = {"schema_version": pa.array([SCHEMA_VERSION] * len(rows), type=pa.int32())}
    for field in schema:  # column by column, in schema order: the first bad column is reported
        if field.name == "schema_version":
            continue
        for i, row in enumerate(rows):
            if not field.nullable and field.name not in row:
                raise ValueError(f"{name}.{field.name}: required column missing from row {i}")
        columns[field.name] = _to_array(name, field, [row.get(field.name) for row in rows])
    return pa.Table.from_pydict(columns, schema=schema)


def _check_choice(name: str, column: str, values: list[Any], allowed: Sequence[str]) -> None:
    for i, value in enumerate(values):
        if value not in allowed:
            raise ValueError(f"{name}.{column}: row {i} is {value!r}; allowed {list(allowed)}")


def _check_unique(name: str, keys: list[tuple[Any, ...]], what: str) -> None:
    seen: dict[tuple[Any, ...], int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"{name}: rows {seen[key]} and {i} repeat {what} {key}; each must appear once")
        seen[key] = i


def _prepare_trial_row(i: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the flattened hyperparameters and total_seconds of one `trials` row; check params_json."""
    out = dict(row)
    text = out.get("params_json")
    if isinstance(text, str):
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"trials.params_json: row {i} is not valid JSON ({exc})") from exc
        if not isinstance(params, dict):
            raise ValueError(
                f"trials.params_json: row {i} is a JSON {type(params).__name__}; expected an object"
            )
        for key in FLAT_HYPERPARAMETERS:
            if params.get(key) is None:
                continue
            if out.get(key) is None:
                out[key] = params[key]
            elif out[key] != params[key]:
                raise ValueError(
                    f"trials.{key}: row {i} is {out[key]!r} but params_json has {params[key]!r}; they must agree"
                )
    started, finished = out.get("started_at"), out.get("finished_at")
    if out.get("total_seconds") is None and isinstance(started, datetime) and isinstance(finished, datetime):
        with contextlib.suppress(TypeError):  # naive datetimes: reported by the column check
            out["total_seconds"] = (finished - started).total_seconds()
    return out


def trials_table(rows: Rows) -> pa.Table:
    """The `trials` table (one row per trial) from dicts of column values.

    `params_json` holds every hyperparameter of the trial as a JSON object. The flattened columns
    (beta, gamma, retain_weight, alpha, learning_rate, epochs, batch_size) are taken from the top level
    of params_json when a row leaves them out, and must agree with it when given. `total_seconds`
    defaults to finished_at − started_at. A failed trial must carry its error.
    Raises ValueError naming the column for a missing required column or a value of the wrong type.
    """
    table = _build("trials", [_prepare_trial_row(i, row) for i, row in enumerate(rows)])
    _check_choice("trials", "kind", table["kind"].to_pylist(), TRIAL_KINDS)
    _check_choice("trials", "status", table["status"].to_pylist(), TRIAL_STATUSES)
    for i, (status, error) in enumerate(
        zip(table["status"].to_pylist(), table["error"].to_pylist(), strict=True)
    ):
        if status == "failed" and not error:
            raise ValueError(
                f"trials.error: row {i} has status 'failed' but no error; give the error message"
            )
    return table


def metrics_table(rows: Rows) -> pa.Table:
    """The long-format `metrics` table: (sweep, trial_id, stage, epoch, metric, value) per row.

    stage is "final" (after unlearning), "epoch" (after an unlearning epoch; epoch required),
    "relearn" (after a relearning attack, DESIGN §7) or "timing" (wall seconds of one phase of the
    trial, metric `<phase>_seconds`: see `orchestration.trial.PhaseClock`). A (trial_id, stage, epoch, metric) key may appear
    once, so the table pivots without ambiguity.
    """
    table = _build("metrics", rows)
    stages, epochs = table["stage"].to_pylist(), table["epoch"].to_pylist()
    _check_choice("metrics", "stage", stages, METRIC_STAGES)
    for i, (stage, epoch) in enumerate(zip(stages, epochs, strict=True)):
        if stage == "epoch" and epoch is None:
            raise ValueError(f"metrics.epoch: row {i} has stage 'epoch' but no epoch; give the epoch number")
    keys = list(zip(table["trial_id"].to_pylist(), stages, epochs, table["metric"].to_pylist(), strict=True))
    _check_unique("metrics", keys, "(trial_id, stage, epoch, metric)")
    return table


def examples_table(rows: Rows) -> pa.Table:
    """The `examples` table: per-example statistics of one evaluated model on one split.

    answer_nll / answer_tokens are ℓ and |y| of the answer (DESIGN §5), reference_* those of the truth
    ratio's reference (the paraphrased answer on forget/retain, the answer itself on real_authors /
    world_facts), perturbed_* one entry per perturbed answer; prob and truth_ratio are the §6 values
    P̃ (or the normalised choice probability) and R. MUSE and WMDP rows fill their own columns
    (`EXAMPLES_SCHEMA`). A TOFU row (one with `answer_nll`) gives every TOFU column. One row per
    (trial_id, split, index).
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if isinstance(row, Mapping) and row.get("answer_nll") is not None:
            for column, _ in _TOFU_EXAMPLE_FIELDS:
                if row.get(column) is None:
                    raise ValueError(f"examples.{column}: required column missing from row {i}")
    table = _build("examples", rows)
    nll_lengths = pc.list_value_length(table["perturbed_nll"]).to_pylist()
    token_lengths = pc.list_value_length(table["perturbed_tokens"]).to_pylist()
    for i, (a, b) in enumerate(zip(nll_lengths, token_lengths, strict=True)):
        if a != b:
            raise ValueError(f"examples.perturbed_tokens: row {i} has {b} entries but perturbed_nll has {a}")
    keys = list(
        zip(
            table["trial_id"].to_pylist(), table["split"].to_pylist(), table["index"].to_pylist(), strict=True
        )
    )
    _check_unique("examples", keys, "(trial_id, split, index)")
    return table


def weights_table(rows: Rows) -> pa.Table:
    """The `weights` table: the closed-form gradient weight of each forget example at the step of each
    unlearning epoch (1-based) that used it: NPO's w (paper eq. 3) or SimNPO's w' (eq. 5), with the
    example's |y| (`answer_tokens`). `index` is the example's position in the forget set; one row per
    (trial_id, epoch, index)."""
    table = _build("weights", rows)
    keys = list(
        zip(
            table["trial_id"].to_pylist(), table["epoch"].to_pylist(), table["index"].to_pylist(), strict=True
        )
    )
    _check_unique("weights", keys, "(trial_id, epoch, index)")
    return table


def relearn_table(rows: Rows) -> pa.Table:
    """The `relearn` table: one row per (trial_id, attack, seed, epoch) of a relearning attack (paper
    appendix C.3, Fig. A3): the unlearned checkpoint fine-tuned on `relearn_examples` forget examples,
    the shortest ones ("shortest") or a random draw from `seed` ("random"), evaluated on the whole
    forget set after each relearning epoch (epoch 0: before relearning)."""
    table = _build("relearn", rows)
    _check_choice("relearn", "attack", table["attack"].to_pylist(), RELEARN_ATTACKS)
    keys = list(
        zip(
            table["trial_id"].to_pylist(),
            table["attack"].to_pylist(),
            table["seed"].to_pylist(),
            table["epoch"].to_pylist(),
            strict=True,
        )
    )
    _check_unique("relearn", keys, "(trial_id, attack, seed, epoch)")
    return table


_BUILDERS = {
    "trials": trials_table,
    "metrics": metrics_table,
    "examples": examples_table,
    "weights": weights_table,
    "relearn": relearn_table,
}


def _as_table(name: TableName, value: pa.Table | Rows) -> pa.Table:
    if isinstance(value, pa.Table):
        if value.schema.equals(SCHEMAS[name], check_metadata=True):
            return value
        value = value.to_pylist()
    return _BUILDERS[name](value)


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
    text = os.fspath(root)
    if "://" not in text:
        path = os.path.abspath(os.path.expanduser(text))
        return _Location(pafs.LocalFileSystem(), path.rstrip("/") or "/", "", text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserInputError(
            f"{text}: not a usable results location ({first_line(exc)}); "
            "give a local path or a pyarrow filesystem URI such as s3://bucket/prefix"
        ) from exc
    scheme = text.split("://", 1)[0]
    prefix = "" if isinstance(fs, pafs.LocalFileSystem) else f"{scheme}://"
    return _Location(fs, path.rstrip("/") or "/", prefix, text)


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


def _write_file(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write `table` to `path` so that readers see either the previous file or the whole new one."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    if fs.type_name not in _ATOMIC_RENAME:
        # Object stores: the object appears only when its single upload completes.
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    temporary = f"{folder}/.{PART_NAME}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(temporary) as out:
            out.write(data)
        fs.move(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(temporary)
        raise


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
