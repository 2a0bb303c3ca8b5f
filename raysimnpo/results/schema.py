"""The schemas of a sweep's Parquet tables (`trials`, `metrics`, `examples`, `weights`, `relearn`), their
version, and the upgrade of an older version's table on reading (see `raysimnpo.results.io` for the
layout on disk and the atomic writes)."""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa

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
