"""Per-epoch points: the early-stopping rule and the epoch points added to the Optuna study."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from ray.tune.search import Searcher

from raysimnpo.config.sweep import SweepConfig
from raysimnpo.orchestration.epochs import FrontRule, add_epoch_points, epoch_point_params, epoch_stop_rule
from raysimnpo.orchestration.search import DefineByRun, SweepSearch
from raysimnpo.orchestration.study import EPOCH_POINT, finished_trials
from raysimnpo.orchestration.tuner import Progress


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


def test_a_deterministic_front_judges_a_trial_only_against_the_trials_its_snapshot_names() -> None:
    rule = FrontRule(["max", "max"], margin=0.0, min_epochs=1, deterministic=True)
    rule.snapshot("a", [])
    rule.snapshot("b", [])  # suggested while a runs
    for trial in ("a", "b"):
        rule.restart(trial)
    assert not rule.judge("a", 1, [0.9, 0.9])
    assert not rule.judge("b", 1, [0.1, 0.1])  # a's point is not seen: it may arrive before or after
    rule.snapshot("c", ["a"])  # a was told before c was suggested, b after
    rule.restart("c")
    assert rule.judge("c", 1, [0.1, 0.1])
    assert not rule.judge("d", 1, [0.0, 0.0])  # no snapshot (not a suggestion of this search): never stops
    free = FrontRule(["max", "max"], margin=0.0, min_epochs=1)
    free.judge("a", 1, [0.9, 0.9])
    assert free.judge("b", 1, [0.1, 0.1])  # not deterministic: every point known now


def sweep_with_epochs(epochs: dict, methods: tuple[str, ...] = ("simnpo", "npo")) -> SweepConfig:
    space = {
        "simnpo": {"method.beta": {"low": 1.0, "high": 5.0}, "unlearn.epochs": epochs},
        "npo": {"method.beta": {"low": 0.05, "high": 0.5}},
    }
    return SweepConfig.model_validate(
        {
            "name": "demo",
            "run": {"evaluation": {"every_epoch": True}},
            "search": {"methods": list(methods), "space": {m: space[m] for m in methods}},
        }
    )


def test_epoch_point_params_take_the_trial_settings_with_their_epoch_count() -> None:
    distributions = {
        "method": optuna.distributions.CategoricalDistribution(["simnpo", "npo"]),
        "simnpo/method.beta": optuna.distributions.FloatDistribution(1.0, 5.0),
        "simnpo/unlearn.epochs": optuna.distributions.IntDistribution(3, 8),
        "npo/method.beta": optuna.distributions.FloatDistribution(0.05, 0.5),
    }
    params = {"method": "simnpo", "simnpo/method.beta": 2.5, "simnpo/unlearn.epochs": 6}
    assert epoch_point_params(params, distributions, 4) == {**params, "simnpo/unlearn.epochs": 4}
    assert epoch_point_params(params, distributions, 2) is None  # below the searched range
    npo = {"method": "npo", "npo/method.beta": 0.1}
    assert epoch_point_params(npo, distributions, 4) is None  # npo does not search its epochs


def sweep_search(
    tmp_path: Path,
    deadline: float | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    **kwargs: object,
) -> SweepSearch:
    sweep = sweep_with_epochs({"choices": [2, 3, 4]}, methods=("simnpo",))
    return SweepSearch(
        space=DefineByRun(sweep.search),
        metric=["forget_quality", "model_utility"],
        mode=["max", "max"],
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        study_name="demo",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.sqlite'}"),
        deadline=deadline,
        **kwargs,  # type: ignore[arg-type]
    )


def epoch_result(config: dict, ran: int | None = None) -> dict:
    """A trial's last Tune result: its epochs' (FQ, MU), a function of its settings; `ran` < the
    planned epochs: stopped early."""
    beta, planned = config["simnpo"]["method.beta"], config["simnpo"]["unlearn.epochs"]
    points = [
        {"epoch": e, "forget_quality": 0.1 * e * beta / 5, "model_utility": 0.9 - 0.05 * e * beta / 5}
        for e in range(1, (ran or planned) + 1)
    ]
    return {**points[-1], "epoch_points": points, "stopped_early": float(ran is not None and ran < planned)}


def test_a_trial_result_adds_its_earlier_epochs_to_the_study(tmp_path: Path) -> None:
    search = sweep_search(tmp_path, epoch_points=True)
    config = search.suggest("t1")
    assert isinstance(config, dict)
    planned = 4
    config["simnpo"]["unlearn.epochs"] = planned  # ran 4 epochs: points for epochs 2 and 3
    search.on_trial_complete("t1", epoch_result(config))
    search.on_trial_complete("t1", epoch_result(config))  # a repeated completion adds nothing
    ot_trial = search._ot_trials["t1"]
    # nor does a restored searcher telling it once more (its saved state predates the tell)
    add_epoch_points(
        search._ot_study, "t1", ot_trial.params, ot_trial.distributions, epoch_result(config), search.metric
    )
    trials = optuna.load_study(study_name="demo", storage=search._ot_study._storage).get_trials()
    added = [t for t in trials if t.user_attrs.get(EPOCH_POINT)]
    # epoch 1 is outside the choices [2, 3, 4]; the last epoch is the trial's own Optuna trial
    assert [t.params["simnpo/unlearn.epochs"] for t in added] == list(range(2, planned))
    beta = config["simnpo"]["method.beta"]
    for t in added:
        e = t.params["simnpo/unlearn.epochs"]
        assert t.values == pytest.approx([0.1 * e * beta / 5, 0.9 - 0.05 * e * beta / 5])
        assert t.params["simnpo/method.beta"] == beta and t.user_attrs["of_trial"] == "t1"
    assert (
        finished_trials(tmp_path / "optuna.sqlite", "demo") == 1
    )  # epoch points are not trials of the sweep


def test_early_stop_needs_per_epoch_evaluation() -> None:
    with pytest.raises(ValueError, match="search.early_stop: needs per-epoch points"):
        SweepConfig.model_validate({"name": "demo", "search": {"early_stop": {"margin": 0.1}}})


def test_a_stopped_trial_adds_every_epoch_it_ran(tmp_path: Path) -> None:
    """Stopped after epoch 3 of 4 planned (early stopping or the time budget): its own Optuna trial
    is PRUNED, so epoch 3 is a point of the study like the others."""
    search = sweep_search(tmp_path, epoch_points=True)
    config = search.suggest("t1")
    config["simnpo"]["unlearn.epochs"] = 4  # as if 4 were suggested: the points take the epoch counts ran
    search.on_trial_complete("t1", epoch_result(config, ran=3))
    trials = search._ot_study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.PRUNED
    assert [t.params["simnpo/unlearn.epochs"] for t in trials[1:]] == [2, 3]


def test_the_time_budget_stops_after_the_epoch_that_passes_it() -> None:
    assert epoch_stop_rule(None, None, ["forget_quality"], "t1") is None  # neither rule: never asked
    row = {"epoch": 2.0, "forget_quality": 0.1}
    assert epoch_stop_rule(None, time.time() - 1, ["forget_quality"], "t1")(row) is True  # type: ignore[misc]
    assert epoch_stop_rule(None, time.time() + 3600, ["forget_quality"], "t1")(row) is False  # type: ignore[misc]


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


def searched_study(tmp_path: Path, lag: int | None, first_to_end: str) -> list[tuple]:
    """Five trials, two at a time (as Tune's concurrency limit runs them), each ending when
    `first_to_end` ("oldest" or "newest") of the running ones ends; the study it leaves, in order."""
    search = sweep_search(
        tmp_path,
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
        epoch_points=True,
        lag=lag,
        num_trials=5,
    )
    running: list[tuple[str, dict]] = []
    made = 0
    while made < 5 or running:
        while len(running) < 2 and made < 5:
            config = search.suggest(f"t{made}")
            if config is None:  # an older trial still runs
                break
            running.append((f"t{made}", config))
            made += 1
        trial_id, config = running.pop(0 if first_to_end == "oldest" else -1)
        search.on_trial_complete(trial_id, epoch_result(config))
    return [
        (t.params, t.values, t.state, t.user_attrs.get("of_trial")) for t in search._ot_study.get_trials()
    ]


def test_a_deterministic_search_suggests_the_same_trials_whichever_ends_first(tmp_path: Path) -> None:
    runs = {}
    for lag in (2, None):
        for order in ("oldest", "newest"):
            (tmp_path / f"{lag}-{order}").mkdir()
            runs[lag, order] = searched_study(tmp_path / f"{lag}-{order}", lag, order)
    assert runs[2, "oldest"] == runs[2, "newest"]
    assert sum(1 for t in runs[2, "oldest"] if t[3] is None) == 5  # every trial once, beside its epoch points
    # Telling each trial as it ends (the default) suggests from whatever has ended by then.
    assert runs[None, "oldest"] != runs[None, "newest"]


def test_a_deterministic_suggestion_waits_for_the_trial_k_before_it(tmp_path: Path) -> None:
    search = sweep_search(tmp_path, epoch_points=True, lag=2, num_trials=9)
    first, second = search.suggest("t0"), search.suggest("t1")
    assert search.suggest("t2") is None  # suggestion 2 is made from trial 0, which runs
    search.on_trial_complete("t1", epoch_result(second))
    assert search.suggest("t2") is None  # t1 ended first: t0 still runs
    assert [t.state for t in search._ot_study.get_trials()] == [optuna.trial.TrialState.RUNNING] * 2
    lines: list[str] = []
    progress = Progress(9, lines.append, [("forget_quality", "max")], tmp_path / "optuna.sqlite", "demo")
    assert progress._study_state()[0] == 1  # the progress line counts t1 as done
    progress._line([])
    assert "1/9 done" in lines[-1] and "best FQ - |" in lines[-1]  # nothing told yet: no value, not "nan"
    search.on_trial_complete("t0", epoch_result(first))
    third = search.suggest("t2")
    assert isinstance(third, dict)
    own = [t for t in search._ot_study.get_trials() if not t.user_attrs.get(EPOCH_POINT)]
    # t0 told before suggestion 2; t1, though ended, is hidden from it (told before suggestion 3)
    assert [t.state.name for t in own] == ["COMPLETE", "RUNNING", "RUNNING"]
    search.deadline = time.time() - 1  # the budget runs out while t2 runs
    assert search.suggest("t3") == Searcher.FINISHED
    search.on_trial_complete("t2", epoch_result(third))
    own = [t for t in search._ot_study.get_trials() if not t.user_attrs.get(EPOCH_POINT)]
    assert [t.state.name for t in own] == ["COMPLETE"] * 3


def test_a_deterministic_search_keeps_each_trials_snapshot_in_its_saved_state(tmp_path: Path) -> None:
    """What each trial is judged against: the earlier experiments' trials and those told before it
    was suggested. Saved with the searcher, so a restored sweep reruns a killed trial against them."""
    search = sweep_search(tmp_path, epoch_points=True, lag=2, num_trials=9, earlier=["old"])
    first, second = search.suggest("t0"), search.suggest("t1")
    search.on_trial_complete("t1", epoch_result(second))
    search.on_trial_complete("t0", epoch_result(first))
    search.suggest("t2")
    search.on_trial_complete("t2", epoch_result(first))  # t2 is told only when suggestion 4 sees it
    search.suggest("t3")
    expected = {"t0": ["old"], "t1": ["old"], "t2": ["old", "t0"], "t3": ["old", "t0", "t1"]}
    assert {t: search.judged_against(t) for t in expected} == expected
    search.save(str(tmp_path / "searcher.pkl"))
    (tmp_path / "restored").mkdir()
    restored = sweep_search(tmp_path / "restored", lag=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert {t: restored.judged_against(t) for t in expected} == expected
