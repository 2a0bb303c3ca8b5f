"""Per-epoch points: the early-stopping rule and the epoch points added to the Optuna study."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.search import Searcher

from raysimnpo.config.sweep import SweepConfig
from raysimnpo.orchestration.epochs import (
    EpochPoints,
    FrontRule,
    epoch_point_params,
    epoch_stop_rule,
    trial_params,
)
from raysimnpo.orchestration.study import EPOCH_POINT, finished_trials, search_distributions
from raysimnpo.orchestration.tuner import DefineByRun, SweepSearch


def test_front_rule_stops_a_trial_only_when_all_its_epochs_are_dominated() -> None:
    rule = FrontRule(["max", "max"], margin=0.2, min_epochs=2)
    for epoch, point in enumerate([[1e-3, 0.70], [1e-2, 0.78], [5e-2, 0.77]], start=1):
        assert not rule.judge("good", epoch, point)
    assert not rule.judge("bad", 1, [1e-9, 0.40])  # before min_epochs: never stopped
    # 5 points: (1e-2, 0.78) has percentiles (0.8, 1.0), (1e-9, 0.40) and (1e-9, 0.41) ~ (0.2-0.4, 0.2-0.4)
    assert rule.judge("bad", 2, [1e-9, 0.41])
    # A trial with one epoch on the front is kept, even if its other epochs are dominated.
    assert not rule.judge("mixed", 1, [1e-9, 0.40])
    assert not rule.judge("mixed", 2, [0.5, 0.60])
    # A restarted worker group reports epoch 1 again: the old points of that trial are replaced.
    rule.judge("bad", 1, [0.9, 0.9])
    assert rule.points["bad"] == [[0.9, 0.9]]
    rule.restart("bad")
    assert "bad" not in rule.points


def test_front_rule_with_no_other_trial_never_stops() -> None:
    rule = FrontRule(["max", "min"], margin=0.0, min_epochs=1)
    assert not rule.judge("only", 1, [0.1, 5.0])
    assert not rule.judge("only", 2, [0.05, 6.0])


def sweep_with_epochs(epochs: dict) -> SweepConfig:
    return SweepConfig.model_validate(
        {
            "name": "demo",
            "run": {"evaluation": {"every_epoch": True}},
            "search": {
                "methods": ["simnpo", "npo"],
                "space": {
                    "simnpo": {"method.beta": {"low": 1.0, "high": 5.0}, "unlearn.epochs": epochs},
                    "npo": {"method.beta": {"low": 0.05, "high": 0.5}},
                },
            },
        }
    )


def test_epoch_points_take_the_trial_settings_with_their_epoch_count() -> None:
    sweep = sweep_with_epochs({"low": 3, "high": 8, "integer": True})
    distributions = search_distributions(sweep.search)
    params = trial_params({"method": "simnpo", "simnpo": {"method.beta": 2.5, "unlearn.epochs": 6}})
    assert params == {"method": "simnpo", "simnpo/method.beta": 2.5, "simnpo/unlearn.epochs": 6}
    assert epoch_point_params(params, distributions, 4) == {**params, "simnpo/unlearn.epochs": 4}
    assert epoch_point_params(params, distributions, 2) is None  # below the searched range
    npo = trial_params({"method": "npo", "npo": {"method.beta": 0.1}})
    assert epoch_point_params(npo, distributions, 4) is None  # npo does not search its epochs


def test_epoch_points_callback_adds_earlier_epochs_to_the_study(tmp_path: Path) -> None:
    sweep = sweep_with_epochs({"choices": [2, 3, 4]})
    path = tmp_path / "optuna.sqlite"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="demo", storage=storage, directions=["maximize", "maximize"])
    distributions = search_distributions(sweep.search)
    params = {"method": "simnpo", "simnpo/method.beta": 2.5, "simnpo/unlearn.epochs": 4}
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, values=[0.3, 0.7]
        )
    )
    trial = SimpleNamespace(
        trial_id="t1",
        config={"method": "simnpo", "simnpo": {"method.beta": 2.5, "unlearn.epochs": 4}},
        last_result={
            "completed": 1.0,
            "epoch": 4,
            "epoch_points": [
                {"epoch": e, "forget_quality": 0.1 * e, "model_utility": 0.9 - 0.05 * e} for e in (1, 2, 3, 4)
            ],
        },
    )
    EpochPoints(sweep, str(path)).on_trial_complete(0, [], trial)
    trials = optuna.load_study(study_name="demo", storage=storage).get_trials()
    added = [t for t in trials if t.user_attrs.get(EPOCH_POINT)]
    # epoch 1 is outside the choices, epoch 4 is the trial's own Optuna trial
    assert [(t.params["simnpo/unlearn.epochs"], t.values) for t in added] == [
        (2, pytest.approx([0.2, 0.8])),
        (3, pytest.approx([0.3, 0.75])),
    ]
    assert all(t.user_attrs["of_trial"] == "t1" for t in added)
    assert finished_trials(path, "demo") == 1  # epoch points are not trials of the sweep


def test_early_stop_needs_per_epoch_evaluation() -> None:
    with pytest.raises(ValueError, match="search.early_stop: needs per-epoch points"):
        SweepConfig.model_validate({"name": "demo", "search": {"early_stop": {"margin": 0.1}}})


def test_a_stopped_trial_adds_every_epoch_it_ran(tmp_path: Path) -> None:
    """Stopped after epoch 3 of 4 planned (early stopping or the time budget): its own Optuna trial
    is PRUNED (`SweepSearch`), so epoch 3 is a point of the study like the others."""
    sweep = sweep_with_epochs({"choices": [2, 3, 4]})
    path = tmp_path / "optuna.sqlite"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    optuna.create_study(study_name="demo", storage=storage, directions=["maximize", "maximize"])
    trial = SimpleNamespace(
        trial_id="t1",
        config={"method": "simnpo", "simnpo": {"method.beta": 2.5, "unlearn.epochs": 4}},
        last_result={
            "stopped_early": 1.0,
            "epoch": 3,
            "epoch_points": [
                {"epoch": e, "forget_quality": 0.1 * e, "model_utility": 0.5} for e in (1, 2, 3)
            ],
        },
    )
    EpochPoints(sweep, str(path)).on_trial_complete(0, [], trial)
    added = optuna.load_study(study_name="demo", storage=storage).get_trials()
    assert [t.params["simnpo/unlearn.epochs"] for t in added] == [2, 3]


def test_the_time_budget_stops_after_the_epoch_that_passes_it() -> None:
    assert epoch_stop_rule(None, None, ["forget_quality"], "t1") is None  # neither rule: never asked
    row = {"epoch": 2.0, "forget_quality": 0.1}
    assert epoch_stop_rule(None, time.time() - 1, ["forget_quality"], "t1")(row) is True  # type: ignore[misc]
    assert epoch_stop_rule(None, time.time() + 3600, ["forget_quality"], "t1")(row) is False  # type: ignore[misc]


def sweep_search(tmp_path: Path, deadline: float | None) -> SweepSearch:
    sweep = sweep_with_epochs({"choices": [2, 3, 4]})
    return SweepSearch(
        space=DefineByRun(sweep.search),
        metric=["forget_quality", "model_utility"],
        mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="demo",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.sqlite'}"),
        deadline=deadline,
    )


def test_sweep_search_proposes_nothing_once_the_budget_is_spent(tmp_path: Path) -> None:
    assert sweep_search(tmp_path, time.time() - 1).suggest("t1") == Searcher.FINISHED
    (tmp_path / "later").mkdir()
    assert isinstance(sweep_search(tmp_path / "later", time.time() + 3600).suggest("t1"), dict)


def test_sweep_search_prunes_a_stopped_trial_and_completes_the_others(tmp_path: Path) -> None:
    search = sweep_search(tmp_path, None)
    search.suggest("done")
    search.suggest("stopped")
    search.on_trial_complete("done", {"forget_quality": 0.2, "model_utility": 0.7, "stopped_early": 0.0})
    search.on_trial_complete("stopped", {"forget_quality": 0.1, "model_utility": 0.6, "stopped_early": 1.0})
    states = [t.state for t in search._ot_study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
