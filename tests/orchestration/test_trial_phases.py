"""Trial telemetry: `PhaseClock`'s stage "timing" rows, which engine `auto` evaluates with, and which
reference NLLs a trial unlearns with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raysimnpo import results
from raysimnpo.config.run import RunSettings
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.orchestration import trial
from raysimnpo.orchestration.trial import PhaseClock, PreparedModels, evaluation_engine, load_reference_nll
from raysimnpo.recipes.unlearn import unlearn_inputs
from raysimnpo.recipes.workspace import initial_model, reference_examples, workspace
from raysimnpo.training.scoring import score_sequences

from ..recipes.small_run import run_settings


def test_phase_clock_sums_phases_and_subtracts_inner_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([10.0, 13.5, 20.0, 20.25])  # perf_counter at entry and exit of two phases
    monkeypatch.setattr(trial.time, "perf_counter", lambda: next(ticks))
    clock = PhaseClock()
    with clock.phase("load_original"):  # 3.5 s, of which the loop reported 2.0 s
        pass
    clock.add("load_original", -2.0)
    clock.add("unlearn", 2.0)
    with clock.phase("evaluate"):  # 0.25 s
        pass
    clock.add("eval_startup", -1.0)  # a part larger than its phase cannot go below 0 in the table
    assert clock.seconds == {"load_original": 1.5, "unlearn": 2.0, "evaluate": 0.25, "eval_startup": -1.0}
    rows = clock.rows("s", "t1")
    assert [(r["metric"], r["value"]) for r in rows] == [
        ("load_original_seconds", 1.5),
        ("unlearn_seconds", 2.0),
        ("evaluate_seconds", 0.25),
        ("eval_startup_seconds", 0.0),
    ]
    table = results.metrics_table(rows)  # stage "timing" is a results stage, epoch null
    assert set(table["stage"].to_pylist()) == {"timing"} and table["epoch"].null_count == 4


def test_phase_clock_records_a_phase_that_raised() -> None:
    clock = PhaseClock()
    with pytest.raises(RuntimeError), clock.phase("unlearn"):
        raise RuntimeError("diverged")
    assert "unlearn" in clock.seconds and clock.seconds["unlearn"] >= 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "in_process"),  # the default: one CPU worker, unlearned in the trial's own process
        (["resources.workers=2"], "ray_data"),  # a TorchTrainer wrote the checkpoint
        (["resources.gpus_per_worker=1"], "ray_data"),
        (["run.evaluation.engine=ray_data"], "ray_data"),  # an explicit engine is kept
        (["run.evaluation.engine=in_process", "resources.workers=2"], "in_process"),
    ],
)
def test_auto_engine_evaluates_in_memory_only_after_in_trial_cpu_unlearning(
    overrides: list[str], expected: str
) -> None:
    sweep = load_sweep_config("tofu", overrides)
    assert evaluation_engine(sweep, sweep.run) == expected


def test_a_trial_with_another_encoding_scores_its_own_reference_nll(tmp_path: Path) -> None:
    """NPO's ℓ_ref (eq. 2) is the Original's NLL of each forget answer as the trial encodes it. The
    sweep scores it once on its own encoding; a trial whose searched `unlearn.max_length` cuts the
    answers elsewhere must not read those values, and scores its own from the Original instead."""
    config = RunSettings.model_validate(
        dict(run_settings(), cache_dir=str(tmp_path / "cache"), method={"name": "npo"})
    )
    ws = workspace(config)
    original = initial_model(config, ws.benchmark.corpus(ws.data)).model  # untrained: ℓ_ref is any model's
    forget, refusals = reference_examples(ws)
    stored = score_sequences(original, forget, 64, ws.pad_id)[0]
    location = tmp_path / "reference-nll.parquet"
    results.write_parquet(
        pa.table({"forget_nll": stored, "refusal_nll": np.zeros(len(refusals))}), str(location)
    )
    prepared = PreparedModels(
        storage=str(tmp_path),
        run_dir=str(tmp_path / "sweep"),
        original=str(tmp_path / "original"),
        retrain=None,
        reference_nll=str(location),
        reference_nll_key=ws.key,
        retrain_reference=None,
        original_metrics={},
        retrain_metrics=None,
    )

    beta = config.model_copy(update={"method": config.method.model_copy(update={"beta": 0.5})})
    same = load_reference_nll(prepared, ws.for_run(beta))  # another β: the same encoding
    assert same is not None and np.array_equal(same[0], stored)

    short = config.model_copy(update={"unlearn": config.unlearn.model_copy(update={"max_length": 80})})
    trial_ws = ws.for_run(short)
    assert load_reference_nll(prepared, trial_ws) is None
    inputs = unlearn_inputs(trial_ws, short.method, original, None)
    own = score_sequences(original, reference_examples(trial_ws)[0], 64, ws.pad_id)[0]
    np.testing.assert_allclose(inputs.forget_ref_nll.numpy(), own, rtol=1e-6)
    # the sweep's values are for whole answers: reading them would have been wrong here
    assert (own < stored - 1.0).sum() >= len(stored) // 2
