"""Trial telemetry: `PhaseClock`'s stage "timing" rows, and which engine `auto` evaluates with."""

from __future__ import annotations

import pytest

from raysimnpo import results
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.orchestration import trial
from raysimnpo.orchestration.trial import PhaseClock, evaluation_engine


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
