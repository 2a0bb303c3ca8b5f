"""raysimnpo.results: schemas, atomic per-trial writes, and the checks made when reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raysimnpo.errors import UserInputError
from raysimnpo.results import (
    EXAMPLES_SCHEMA,
    METRICS_SCHEMA,
    SCHEMA_VERSION,
    TRIALS_SCHEMA,
    VERSION_KEY,
    WEIGHTS_SCHEMA,
    examples_table,
    metrics_table,
    read_table,
    results_root,
    trial_ids,
    trials_table,
    weights_table,
    write_trial_results,
)
from raysimnpo.results.io import _write_file

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PARAMS = {"beta": 2.5, "gamma": 0.0, "learning_rate": 1e-5, "epochs": 10, "batch_size": 32, "delta": 0.1}


def trial_row(trial_id: str = "t1", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sweep": "demo",
        "trial_id": trial_id,
        "kind": "trial",
        "method": "simnpo",
        "params_json": json.dumps(PARAMS),
        "seed": 42,
        "status": "completed",
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=90.5),
        "train_seconds": 60.0,
        "eval_seconds": 30.0,
        "checkpoint": f"/ckpt/{trial_id}",
        "forget_quality": 0.25,
        "model_utility": 0.5,
    }
    row.update(overrides)
    return row


def metric_rows(trial_id: str = "t1", value: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "sweep": "demo",
            "trial_id": trial_id,
            "stage": "epoch",
            "epoch": 1,
            "metric": "loss",
            "value": value,
        },
        {"sweep": "demo", "trial_id": trial_id, "stage": "final", "metric": "forget_quality", "value": 0.25},
    ]


def example_row(trial_id: str = "t1", index: int = 0, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sweep": "demo",
        "trial_id": trial_id,
        "split": "forget",
        "index": index,
        "question": "Who wrote X?",
        "answer": "Jane Doe wrote X.",
        "answer_tokens": 6,
        "answer_nll": 3.0,
        "reference_nll": 4.0,
        "reference_tokens": 8,
        "perturbed_nll": [5.0, 6.0],
        "perturbed_tokens": [5, 6],
        "prob": 0.6065306597126334,  # exp(-3/6)
        "truth_ratio": 0.6065306597126334,  # exp(-1)/exp(-0.5)
        "generation": "Jane Doe.",
        "rouge_l": 0.5,
    }
    row.update(overrides)
    return row


def part(root: Path, table: str, trial_id: str) -> Path:
    return root / table / f"trial_id={trial_id}" / "part-0.parquet"


def test_trials_round_trip_fills_flat_hyperparameters_and_version(tmp_path: Path) -> None:
    root = tmp_path / "results"
    written = write_trial_results(root, "t1", trials=[trial_row()])
    assert written == {"trials": str(part(root, "trials", "t1"))}
    table = read_table(root, "trials")
    assert table.schema.equals(TRIALS_SCHEMA, check_metadata=True)
    (row,) = table.to_pylist()
    assert row["schema_version"] == SCHEMA_VERSION == 2
    assert (row["beta"], row["gamma"], row["learning_rate"]) == (2.5, 0.0, 1e-5)  # from params_json
    assert (row["epochs"], row["batch_size"]) == (10, 32)
    assert row["retain_weight"] is None and row["alpha"] is None and row["error"] is None
    assert row["total_seconds"] == pytest.approx(90.5)  # finished_at − started_at
    assert row["started_at"] == T0
    assert json.loads(row["params_json"]) == PARAMS
    file_metadata = pq.read_metadata(part(root, "trials", "t1")).metadata
    assert file_metadata[VERSION_KEY.encode()] == b"2"


def test_metrics_and_examples_round_trip(tmp_path: Path) -> None:
    examples = [
        example_row(index=0),
        # numpy arrays and float token counts (as scoring returns them) are accepted; 12.0 -> 12.
        example_row(
            index=1,
            answer_tokens=np.float64(12.0),
            perturbed_nll=np.array([1.5, 2.5, 3.5]),
            perturbed_tokens=np.array([3.0, 4.0, 5.0]),
            generation=None,
            rouge_l=None,
        ),
    ]
    write_trial_results(tmp_path, "t1", trials=[trial_row()], metrics=metric_rows(), examples=examples)

    metrics = read_table(tmp_path, "metrics")
    assert metrics.schema.equals(METRICS_SCHEMA, check_metadata=True)
    assert [(r["stage"], r["epoch"], r["metric"], r["value"]) for r in metrics.to_pylist()] == [
        ("epoch", 1, "loss", 1.0),
        ("final", None, "forget_quality", 0.25),
    ]
    read = read_table(tmp_path, "examples")
    assert read.schema.equals(EXAMPLES_SCHEMA, check_metadata=True)
    first, second = read.to_pylist()
    assert {k: v for k, v in first.items() if k in example_row() or k == "schema_version"} == {
        "schema_version": 2,
        **example_row(index=0),
    }
    assert all(first[k] is None for k in first if k not in example_row() and k != "schema_version")
    assert second["answer_tokens"] == 12
    assert second["perturbed_nll"] == [1.5, 2.5, 3.5]
    assert second["perturbed_tokens"] == [3, 4, 5]
    assert second["generation"] is None and second["rouge_l"] is None


def weight_row(epoch: int, index: int, weight: float, tokens: Any, trial_id: str = "t1") -> dict[str, Any]:
    return {
        "sweep": "demo",
        "trial_id": trial_id,
        "epoch": epoch,
        "index": index,
        "weight": weight,
        "answer_tokens": tokens,
    }


def test_weights_round_trip_and_runs_without_the_table(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_trial_results(root, "t1", trials=[trial_row()])  # a run written before the table existed
    assert read_table(root, "weights").num_rows == 0
    assert read_table(root, "weights").schema.equals(WEIGHTS_SCHEMA, check_metadata=True)

    rows = [
        weight_row(1, 0, 1.0, 6),
        weight_row(1, 3, 0.5378828, np.float64(12.0)),
        weight_row(2, 0, 0.25, 6),
    ]
    written = write_trial_results(root, "t1", trials=[trial_row()], weights=rows)
    assert written["weights"] == str(part(root, "weights", "t1"))
    read = read_table(root, "weights")
    assert read.schema.equals(WEIGHTS_SCHEMA, check_metadata=True)
    assert [(r["epoch"], r["index"], r["weight"], r["answer_tokens"]) for r in read.to_pylist()] == [
        (1, 0, 1.0, 6),
        (1, 3, 0.5378828, 12),
        (2, 0, 0.25, 6),
    ]
    assert read.to_pylist()[0]["schema_version"] == SCHEMA_VERSION == 2
    assert pq.read_metadata(part(root, "weights", "t1")).metadata[VERSION_KEY.encode()] == b"2"
    # A retried trial without weights removes its old file.
    write_trial_results(root, "t1", trials=[trial_row()])
    assert not part(root, "weights", "t1").exists() and read_table(root, "weights").num_rows == 0


def test_weights_table_checks() -> None:
    with pytest.raises(ValueError, match=r"weights: rows 0 and 1 repeat \(trial_id, epoch, index\)"):
        weights_table([weight_row(1, 0, 1.0, 6), weight_row(1, 0, 0.9, 6)])
    with pytest.raises(ValueError, match="weights.answer_tokens"):
        weights_table([weight_row(1, 0, 1.0, 6.5)])


def test_several_trials_and_string_ids(tmp_path: Path) -> None:
    # "00001" must stay a string (hive partition values are not type-inferred).
    for trial_id in ("00001", "b_00002"):
        write_trial_results(tmp_path, trial_id, trials=[trial_row(trial_id)], metrics=metric_rows(trial_id))
    assert trial_ids(tmp_path) == {"00001", "b_00002"}
    trials = read_table(tmp_path, "trials")
    assert sorted(trials["trial_id"].to_pylist()) == ["00001", "b_00002"]
    assert read_table(tmp_path, "metrics").num_rows == 4
    assert read_table(tmp_path, "examples").num_rows == 0  # no examples/ folder: empty, typed
    assert read_table(tmp_path, "examples").schema.equals(EXAMPLES_SCHEMA, check_metadata=True)


def test_retried_trial_overwrites_its_own_files(tmp_path: Path) -> None:
    write_trial_results(
        tmp_path, "t1", trials=[trial_row()], metrics=metric_rows(value=1.0), examples=[example_row()]
    )
    write_trial_results(tmp_path, "t2", trials=[trial_row("t2")], metrics=metric_rows("t2", value=9.0))
    # The retry fails during evaluation: new metrics, no examples.
    failed = trial_row(status="failed", error="RuntimeError: CUDA out of memory", forget_quality=None)
    write_trial_results(tmp_path, "t1", trials=[failed], metrics=metric_rows(value=2.0))

    trials = read_table(tmp_path, "trials").to_pylist()
    assert sorted((r["trial_id"], r["status"]) for r in trials) == [("t1", "failed"), ("t2", "completed")]
    metrics = read_table(tmp_path, "metrics").to_pylist()
    losses = sorted((r["trial_id"], r["value"]) for r in metrics if r["metric"] == "loss")
    assert losses == [("t1", 2.0), ("t2", 9.0)]
    assert len(metrics) == 4
    assert read_table(tmp_path, "examples").num_rows == 0  # the first attempt's examples are gone
    assert not part(tmp_path, "examples", "t1").exists()
    assert sorted(p.name for p in part(tmp_path, "trials", "t1").parent.iterdir()) == ["part-0.parquet"]


def test_leftover_temporary_file_is_ignored(tmp_path: Path) -> None:
    write_trial_results(tmp_path, "t1", trials=[trial_row()], metrics=metric_rows())
    folder = part(tmp_path, "metrics", "t1").parent
    (folder / ".part-0.parquet.tmp-0123abcd").write_bytes(b"PAR1 half a file")
    pq.write_table(metrics_table(metric_rows(value=7.0)), folder / ".part-0.parquet.tmp-4567ef")
    metrics = read_table(tmp_path, "metrics")
    assert metrics.num_rows == 2
    assert 7.0 not in metrics["value"].to_pylist()


CRASHING_WRITER = """
import dataclasses, os, sys
from raysimnpo.results import io as results
sys.path.insert(0, sys.argv[2])
from test_io import example_row, metric_rows, trial_row

class DyingFileSystem:  # the local filesystem, except that the process dies in the middle of a write
    def __init__(self, fs, where):
        self.fs, self.where = fs, where
    def __getattr__(self, name):
        return getattr(self.fs, name)
    def open_output_stream(self, path):
        out = self.fs.open_output_stream(path)
        if self.where != "mid-stream":
            return out
        class Half:  # half of the bytes reach the temporary file, then the process is gone
            def __enter__(self): return self
            def __exit__(self, *exc): return False
            def write(self, data):
                out.write(memoryview(data)[: len(data) // 2]); out.flush(); os._exit(9)
        return Half()
    def move(self, src, dest):  # the whole temporary file is written; the rename never happens
        os._exit(9)

locate = results._locate
results._locate = lambda root: dataclasses.replace(locate(root), fs=DyingFileSystem(locate(root).fs, sys.argv[3]))
results.write_trial_results(
    sys.argv[1], "t1", trials=[trial_row(model_utility=0.9)], metrics=metric_rows(value=5.0),
    examples=[example_row()],
)
"""


@pytest.mark.parametrize("where", ["mid-stream", "before-rename"])
def test_process_killed_mid_write_leaves_the_previous_results(tmp_path: Path, where: str) -> None:
    """A trial's results are rewritten by a process that dies mid-write (os._exit, as SIGKILL would):
    readers see the previous complete results, never a half file, and the next write succeeds."""
    import subprocess
    import sys

    write_trial_results(tmp_path, "t1", trials=[trial_row()], metrics=metric_rows(value=1.0))
    write_trial_results(tmp_path, "t2", trials=[trial_row("t2")], metrics=metric_rows("t2", value=2.0))
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path), str(Path(__file__).parent), where],
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == 9, crashed.stderr

    # The trials file of t1 was removed first, so t1 reads as "no complete results" (to be re-run).
    assert trial_ids(tmp_path) == {"t2"}
    trials = read_table(tmp_path, "trials").to_pylist()
    assert [(t["trial_id"], t["model_utility"]) for t in trials] == [("t2", 0.5)]
    leftovers = list(part(tmp_path, "metrics", "t1").parent.glob(".part-0.parquet.tmp-*"))
    assert len(leftovers) == 1  # hidden: never read as a table file
    losses = sorted(
        (m["trial_id"], m["value"])
        for m in read_table(tmp_path, "metrics").to_pylist()
        if m["metric"] == "loss"
    )
    assert losses == [("t1", 1.0), ("t2", 2.0)]  # t1's old metrics file is intact, not half-replaced

    write_trial_results(tmp_path, "t1", trials=[trial_row(model_utility=0.9)], metrics=metric_rows(value=5.0))
    assert sorted(
        (t["trial_id"], t["model_utility"]) for t in read_table(tmp_path, "trials").to_pylist()
    ) == [
        ("t1", 0.9),
        ("t2", 0.5),
    ]


def test_read_trial_row_reads_one_trial(tmp_path: Path) -> None:
    from raysimnpo.results import read_trial_row

    assert read_trial_row(tmp_path, "t1") is None
    write_trial_results(
        tmp_path, "t1", trials=[trial_row(status="failed", error="diverged: loss became nan")]
    )
    row = read_trial_row(tmp_path, "t1")
    assert row is not None and row["status"] == "failed" and row["error"] == "diverged: loss became nan"
    with pytest.raises(ValueError, match="not a valid trial id"):
        read_trial_row(tmp_path, "../t1")


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    write_trial_results(tmp_path, "t1", trials=[trial_row()])
    write_trial_results(tmp_path, "t2", trials=[trial_row("t2")])
    path = part(tmp_path, "trials", "t2")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError) as info:
        read_table(tmp_path, "trials")
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable Parquet file (")
    assert message.endswith("; delete it and re-run that trial")
    assert "\n" not in message
    assert trial_ids(tmp_path) == {"t1", "t2"}  # existence only; the file is not opened


def test_unknown_schema_version_is_rejected(tmp_path: Path) -> None:
    write_trial_results(tmp_path, "t1", trials=[trial_row()])
    path = part(tmp_path, "trials", "t9")
    path.parent.mkdir(parents=True)
    future = trials_table([trial_row("t9")]).replace_schema_metadata({VERSION_KEY: "7"})
    pq.write_table(future, path)
    with pytest.raises(UserInputError) as info:
        read_table(tmp_path, "trials")
    assert (
        str(info.value)
        == f"{path}: results schema version 7 is not supported; this raysimnpo reads versions 1, 2"
    )


def test_version_1_examples_read_with_the_version_2_columns_as_nulls(tmp_path: Path) -> None:
    from raysimnpo.results import EXAMPLES_SCHEMA_V1

    write_trial_results(tmp_path, "t1", trials=[trial_row()])
    path = part(tmp_path, "examples", "t1")
    path.parent.mkdir(parents=True)
    old = pa.Table.from_pylist([{"schema_version": 1, **example_row()}], schema=EXAMPLES_SCHEMA_V1)
    pq.write_table(old, path)
    read = read_table(tmp_path, "examples")
    assert read.schema.equals(EXAMPLES_SCHEMA, check_metadata=True)
    (row,) = read.to_pylist()
    assert row["schema_version"] == 1 and row["truth_ratio"] == example_row()["truth_ratio"]
    assert row["min_k_score"] is None and row["choice_loglik"] is None


def test_muse_and_wmdp_examples_land_in_the_examples_table(tmp_path: Path) -> None:
    key = {"sweep": "demo", "trial_id": "t1"}
    rows = [
        {
            **key,
            "split": "verbmem_forget",
            "index": 0,
            "prompt": "Once",
            "reference": "upon",
            "generation": "upon a",
            "rouge_l_f1": 0.8,
        },
        {**key, "split": "privleak_holdout", "index": 0, "min_k_score": -2.5, "n_tokens": 40},
        {
            **key,
            "split": "wmdp_bio",
            "index": 0,
            "question": "Q?",
            "answer_index": 2,
            "predicted": 1,
            "choice_loglik": [-1.0, -0.5, -2.0, -3.0],
        },
    ]
    write_trial_results(tmp_path, "t1", trials=[trial_row()], examples=rows)
    read = {r["split"]: r for r in read_table(tmp_path, "examples").to_pylist()}
    assert read["verbmem_forget"]["rouge_l_f1"] == 0.8 and read["verbmem_forget"]["answer_nll"] is None
    assert (read["privleak_holdout"]["min_k_score"], read["privleak_holdout"]["n_tokens"]) == (-2.5, 40)
    assert read["wmdp_bio"]["choice_loglik"] == [-1.0, -0.5, -2.0, -3.0]
    assert (read["wmdp_bio"]["answer_index"], read["wmdp_bio"]["predicted"]) == (2, 1)


def test_file_without_version_or_with_other_columns_is_rejected(tmp_path: Path) -> None:
    write_trial_results(tmp_path, "t1", trials=[trial_row()], metrics=metric_rows())
    path = part(tmp_path, "metrics", "t1")
    pq.write_table(metrics_table(metric_rows()).replace_schema_metadata({}), path)
    with pytest.raises(UserInputError, match=r"no results schema version in its metadata"):
        read_table(tmp_path, "metrics")
    renamed = metrics_table(metric_rows()).rename_columns([*METRICS_SCHEMA.names[:-1], "val"])
    renamed = renamed.replace_schema_metadata(METRICS_SCHEMA.metadata)  # rename_columns drops it
    pq.write_table(renamed, path)
    with pytest.raises(UserInputError) as info:
        read_table(tmp_path, "metrics")
    assert str(info.value) == (
        f"{path}: columns do not match results schema version 2 (missing ['value']; unexpected ['val']); "
        "delete it and re-run that trial"
    )


@pytest.mark.parametrize(
    ("build", "row", "message"),
    [
        (
            trials_table,
            {k: v for k, v in trial_row().items() if k != "method"},
            "trials.method: required column missing from row 0",
        ),
        (
            metrics_table,
            {k: v for k, v in metric_rows()[0].items() if k != "value"},
            "metrics.value: required column missing from row 0",
        ),
        (
            examples_table,
            {k: v for k, v in example_row().items() if k != "perturbed_nll"},
            "examples.perturbed_nll: required column missing from row 0",
        ),
    ],
)
def test_missing_required_column_is_named(build: Any, row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        build([row])
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 1.5, "params_json": "{}"}, "trials.epochs: row 0 is 1.5; expected an integer"),
        ({"seed": None}, "trials.seed: row 0 is null; the column is required"),
        ({"kind": "baseline"}, "trials.kind: row 0 is 'baseline'; allowed ['trial', 'original', 'retrain']"),
        (
            {"status": "failed"},
            "trials.error: row 0 has status 'failed' but no error; give the error message",
        ),
        ({"beta": 3.0}, "trials.beta: row 0 is 3.0 but params_json has 2.5; they must agree"),
        ({"betta": 3.0}, "trials: row 0 has unknown column(s) ['betta']; the columns are"),
        (
            {"started_at": datetime(2025, 1, 1)},
            "trials.started_at: row 0 is datetime.datetime(2025, 1, 1, 0, 0); expected a timezone-aware",
        ),
    ],
)
def test_trials_table_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        trials_table([trial_row(**overrides)])
    assert str(info.value).startswith(message)


def test_metrics_and_examples_checks() -> None:
    with pytest.raises(ValueError, match=r"^metrics: rows 0 and 2 repeat \(trial_id, stage, epoch, metric\)"):
        metrics_table([*metric_rows(), metric_rows()[0]])
    with pytest.raises(ValueError, match=r"^metrics.epoch: row 0 has stage 'epoch' but no epoch"):
        metrics_table([{**metric_rows()[0], "epoch": None}])
    with pytest.raises(
        ValueError, match=r"^examples.perturbed_tokens: row 0 has 1 entries but perturbed_nll has 2"
    ):
        examples_table([example_row(perturbed_tokens=[5])])
    with pytest.raises(ValueError, match=r"^examples: rows 0 and 1 repeat \(trial_id, split, index\)"):
        examples_table([example_row(), example_row()])


def test_write_rejects_rows_of_another_trial(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^metrics.trial_id: rows for \['t2'\] in the results of trial t1"):
        write_trial_results(tmp_path, "t1", trials=[trial_row()], metrics=metric_rows("t2"))
    with pytest.raises(ValueError, match=r"^trials: 2 rows for trial t1; expected exactly one"):
        write_trial_results(tmp_path, "t1", trials=[trial_row(), trial_row()])
    with pytest.raises(ValueError, match=r"^trial_id: '\.\./x' is not a valid trial id"):
        write_trial_results(tmp_path, "../x", trials=[trial_row("../x")])
    assert not (tmp_path / "trials").exists()


def test_no_results_error(tmp_path: Path) -> None:
    root = tmp_path / "demo" / "results"
    with pytest.raises(UserInputError) as info:
        read_table(root, "metrics")
    assert str(info.value) == (
        f"{root}: no results found (expected trials/, metrics/, examples/ written by python -m raysimnpo.sweep)"
    )
    assert trial_ids(root) == set()
    with pytest.raises(UserInputError, match=r"^table: 'trial' is not a results table"):
        read_table(root, "trial")


def test_file_uri_root(tmp_path: Path) -> None:
    uri = results_root(tmp_path.as_uri(), "demo")
    assert uri == f"file://{tmp_path}/demo/results"
    write_trial_results(uri, "t1", trials=[trial_row()], metrics=metric_rows())
    assert part(tmp_path / "demo" / "results", "trials", "t1").is_file()
    assert trial_ids(uri) == {"t1"}
    assert read_table(uri, "trials")["trial_id"].to_pylist() == ["t1"]
    assert read_table(uri, "metrics").num_rows == 2


def test_direct_write_on_filesystems_without_atomic_rename(tmp_path: Path) -> None:
    # SubTreeFileSystem is not in the atomic-rename set, like S3: the file is written in one upload.
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    table = metrics_table(metric_rows())
    _write_file(fs, "metrics/trial_id=t1/part-0.parquet", table)
    assert [p.name for p in (tmp_path / "metrics" / "trial_id=t1").iterdir()] == ["part-0.parquet"]
    assert pq.read_table(tmp_path / "metrics" / "trial_id=t1" / "part-0.parquet").equals(table)


def test_table_argument_built_elsewhere_is_revalidated(tmp_path: Path) -> None:
    plain = pa.Table.from_pylist(metric_rows())  # inferred types, no version metadata
    write_trial_results(tmp_path, "t1", trials=trials_table([trial_row()]), metrics=plain)
    assert read_table(tmp_path, "metrics").schema.equals(METRICS_SCHEMA, check_metadata=True)


def test_epoch_candidates_are_each_earlier_epoch_of_a_completed_trial() -> None:
    """A trial evaluated after each of its 3 epochs gives candidates `<id>@1` and `<id>@2` (epoch 3 is
    the trial itself); an epoch without both objectives, and a failed trial, give none."""
    trial = {
        "sweep": "s",
        "trial_id": "t1",
        "kind": "trial",
        "status": "completed",
        "params_json": json.dumps({"method": {"name": "simnpo"}, "unlearn": {"epochs": 3}}),
        "epochs": 3,
        "checkpoint": "/runs/s/checkpoints/t1",
        "forget_quality": 0.3,
        "model_utility": 0.7,
    }
    failed = dict(trial, trial_id="t2", status="failed")

    def row(trial_id: str, epoch: int, metric: str, value: float) -> dict:
        return {
            "sweep": "s",
            "trial_id": trial_id,
            "stage": "epoch",
            "epoch": epoch,
            "metric": metric,
            "value": value,
        }

    metrics = [
        row("t1", 1, "forget_quality", 0.1),
        row("t1", 1, "model_utility", 0.8),
        row("t1", 1, "forget_loss", 2.0),
        row("t1", 2, "forget_quality", 0.5),  # no model_utility at epoch 2: not a candidate
        row("t1", 3, "forget_quality", 0.3),
        row("t1", 3, "model_utility", 0.7),
        row("t2", 1, "forget_quality", 0.9),
        row("t2", 1, "model_utility", 0.9),
    ]
    from raysimnpo.results import epoch_candidates

    trials, finals = epoch_candidates([trial, failed], metrics, ("forget_quality", "model_utility"))
    assert [t["trial_id"] for t in trials] == ["t1.epoch-1"]
    (candidate,) = trials
    assert (candidate["epochs"], candidate["forget_quality"], candidate["model_utility"]) == (1, 0.1, 0.8)
    assert candidate["checkpoint"] == "/runs/s/checkpoints/t1.epoch-1"
    assert json.loads(candidate["params_json"])["evaluated_epoch"] == 1
    assert {(m["trial_id"], m["stage"], m["metric"], m["value"]) for m in finals} == {
        ("t1.epoch-1", "final", "forget_quality", 0.1),
        ("t1.epoch-1", "final", "model_utility", 0.8),
        ("t1.epoch-1", "final", "forget_loss", 2.0),
    }
