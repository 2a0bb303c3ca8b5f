"""Rows -> Arrow tables: every row is checked against its table's schema (types, required fields, allowed
values, unique keys) before anything is written; a bad row is one error naming the table, the row and
the column."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import first_line
from .schema import (
    _TOFU_EXAMPLE_FIELDS,
    FLAT_HYPERPARAMETERS,
    METRIC_STAGES,
    RELEARN_ATTACKS,
    SCHEMA_VERSION,
    SCHEMAS,
    TRIAL_KINDS,
    TRIAL_STATUSES,
    TableName,
)

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
