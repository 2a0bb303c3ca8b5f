"""raysimnpo.recipes.evaluate on the small generated dataset: evaluating after every epoch
(`EpochEvaluator`) scores each epoch and ends with the evaluation of the final model."""

from __future__ import annotations

import pytest

from raysimnpo.config.run import RunSettings
from raysimnpo.recipes import unlearn

from .small_run import TOFU_METRICS, check_metrics

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_epoch_run_scores_each_epoch_and_ends_with_the_same_model(
    first: unlearn.RunResult, config: RunSettings
) -> None:
    every = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"every_epoch": True})}
    )
    logs: list[str] = []
    run = unlearn.run(every, log=logs.append)
    # the same training: evaluating between epochs changes no weight
    losses = ("forget_loss", "retain_loss")
    assert [{k: r[k] for k in losses} for r in run.training.epochs] == [
        {k: r[k] for k in losses} for r in first.training.epochs
    ]
    for row in run.training.epochs:
        check_metrics(row)
    # the last epoch's evaluation is the run's, and equals a separate evaluation of the final model
    last = run.training.epochs[-1]
    assert {k: last[k] for k in TOFU_METRICS} == {k: run.unlearned.metrics[k] for k in TOFU_METRICS}
    assert run.unlearned.metrics["forget_quality"] == pytest.approx(
        first.unlearned.metrics["forget_quality"], rel=1e-9
    )
    assert run.unlearned.metrics["model_utility"] == pytest.approx(
        first.unlearned.metrics["model_utility"], rel=1e-9
    )
    shown = [line for line in logs if line.startswith("[unlearn] epoch")]
    assert len(shown) == 2 and all("forget_quality" in line and "model_utility" in line for line in shown)
