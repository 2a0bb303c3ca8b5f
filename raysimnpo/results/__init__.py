"""A sweep's Parquet results (DESIGN §8): the tables' `schema` (versioned), `rows` (a row checked
against its table before anything is written), `io` (atomic per-trial writes, checked reads) and
`storage`, the one resolver of local folders and filesystem URIs. Only this package writes Parquet."""

from .io import (
    EPOCH_MARK,
    epoch_candidates,
    read_table,
    read_trial_row,
    read_trial_rows,
    results_root,
    trial_ids,
    write_parquet,
    write_relearn_results,
    write_trial_results,
)
from .rows import examples_table, metrics_table, relearn_table, trials_table, weights_table
from .schema import (
    EXAMPLES_SCHEMA,
    EXAMPLES_SCHEMA_V1,
    METRICS_SCHEMA,
    PART_NAME,
    PARTITION_KEY,
    READABLE_VERSIONS,
    RELEARN_ATTACKS,
    RELEARN_SCHEMA,
    SCHEMA_VERSION,
    TABLE_NAMES,
    TRIALS_SCHEMA,
    VERSION_KEY,
    WEIGHTS_SCHEMA,
)

__all__ = [
    "EPOCH_MARK",
    "EXAMPLES_SCHEMA",
    "EXAMPLES_SCHEMA_V1",
    "METRICS_SCHEMA",
    "PARTITION_KEY",
    "PART_NAME",
    "READABLE_VERSIONS",
    "RELEARN_ATTACKS",
    "RELEARN_SCHEMA",
    "SCHEMA_VERSION",
    "TABLE_NAMES",
    "TRIALS_SCHEMA",
    "VERSION_KEY",
    "WEIGHTS_SCHEMA",
    "epoch_candidates",
    "examples_table",
    "metrics_table",
    "read_table",
    "read_trial_row",
    "read_trial_rows",
    "relearn_table",
    "results_root",
    "trial_ids",
    "trials_table",
    "weights_table",
    "write_parquet",
    "write_relearn_results",
    "write_trial_results",
]
