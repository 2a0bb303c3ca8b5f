"""The sweep's sampler: `search.method_choice` round_robin (an equal share of trials per method, each
method's ranges sampled from its own trials) against sampled (the method a categorical of one joint
search)."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest

from raysimnpo.config.sweep import SearchSettings
from raysimnpo.orchestration.search import DefineByRun, RoundRobinSampler, SweepSearch, sampler_for

SPACE = {
    "simnpo": {"method.beta": {"low": 1.0, "high": 5.0}},
    "npo": {"method.beta": {"low": 0.05, "high": 0.5, "log": True}},
}


def settings(method_choice: str) -> SearchSettings:
    return SearchSettings.model_validate(
        {"methods": ["simnpo", "npo"], "space": SPACE, "num_trials": 40, "method_choice": method_choice}
    )


def test_round_robin_gives_trial_i_the_method_i_mod_k(tmp_path: Path) -> None:
    search = SweepSearch(
        space=DefineByRun(settings("round_robin")),
        metric=["forget_quality", "model_utility"],
        mode=["max", "max"],
        sampler=sampler_for(settings("round_robin")),
        study_name="demo",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.sqlite'}"),
    )
    methods = []
    for i in range(5):
        config = search.suggest(f"t{i}")
        assert isinstance(config, dict)
        methods.append(config["method"])
        # the NPO trials are far better: a sampled method would drift to NPO
        fq = 0.9 if config["method"] == "npo" else 0.01
        search.on_trial_complete(f"t{i}", {"forget_quality": fq, "model_utility": 0.9})
    assert methods == ["simnpo", "npo", "simnpo", "npo", "simnpo"]


def test_each_method_gets_its_own_sampler_and_sampled_mode_the_plain_one() -> None:
    sampler = sampler_for(settings("round_robin"))
    assert isinstance(sampler, RoundRobinSampler)
    assert list(sampler.samplers) == ["simnpo", "npo"]
    first, second = (s for s in sampler.samplers.values())
    assert isinstance(first, optuna.samplers.TPESampler) and first is not second
    # 40 trials, 20 a method: a third of them random start-up points
    assert first._n_startup_trials == 6
    plain = sampler_for(settings("sampled"))
    assert isinstance(plain, optuna.samplers.TPESampler) and plain._n_startup_trials == 10


def test_a_method_asked_for_without_a_turn_is_an_error() -> None:
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=sampler_for(settings("round_robin"))
    )
    with pytest.raises(RuntimeError, match="without a turn"):
        DefineByRun(settings("round_robin"))(study.ask())


def simnpo_betas(method_choice: str) -> list[float]:
    """SimNPO β suggested by a study where every NPO point dominates every SimNPO point, and SimNPO's
    own best points lie at β = 2 (FQ falls off as (β - 2)²)."""
    sampler = sampler_for(settings(method_choice))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    simnpo = optuna.distributions.FloatDistribution(1.0, 5.0)
    npo = optuna.distributions.FloatDistribution(0.05, 0.5, log=True)
    method = optuna.distributions.CategoricalDistribution(["simnpo", "npo"])
    for k in range(20):
        beta = 1.0 + 4.0 * k / 19
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": "simnpo", "simnpo/method.beta": beta},
                distributions={"method": method, "simnpo/method.beta": simnpo},
                values=[0.3 - 0.05 * (beta - 2.0) ** 2, 0.5 - 0.01 * (beta - 2.0) ** 2],
            )
        )
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": "npo", "npo/method.beta": 0.05 + 0.02 * k},
                distributions={"method": method, "npo/method.beta": npo},
                values=[0.9 + 0.001 * k, 0.9 - 0.001 * k],
            )
        )
    betas = []
    for _ in range(30):
        if isinstance(sampler, RoundRobinSampler):
            sampler.turn = 0  # SimNPO's turn
        else:
            study.enqueue_trial({"method": "simnpo"})  # the joint search asked for SimNPO
        trial = study.ask()
        DefineByRun(settings(method_choice))(trial)
        assert trial.params["method"] == "simnpo"
        betas.append(trial.params["simnpo/method.beta"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not a point: every ask sees the same study
    return betas


def test_round_robin_samples_a_dominated_method_near_its_own_best_points() -> None:
    """β uniform on [1, 5] lies within 0.5 of 2 a quarter of the time. Ranked with NPO, none of the
    SimNPO points is among the good ones and β is drawn blind; ranked among SimNPO's own, the
    good points are those near β = 2, and most suggestions land there."""
    distances = {c: [abs(b - 2.0) for b in simnpo_betas(c)] for c in ("round_robin", "sampled")}
    near = {c: sum(d < 0.5 for d in ds) / 30 for c, ds in distances.items()}
    assert near["round_robin"] >= 0.6
    assert near["sampled"] <= 0.45
    assert statistics.median(distances["round_robin"]) < 0.5


def test_a_relative_sampler_models_each_method_s_own_ranges() -> None:
    """GP (like CMA-ES and NSGA-II) samples jointly the parameters every trial of the study has: with
    two methods in one search that is the method alone, and β is drawn at random. Per method, it is
    that method's ranges."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    method = optuna.distributions.CategoricalDistribution(["simnpo", "npo"])
    for k in range(4):
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": "simnpo", "simnpo/method.beta": 1.0 + k},
                distributions={
                    "method": method,
                    "simnpo/method.beta": optuna.distributions.FloatDistribution(1.0, 5.0),
                },
                values=[0.1 * k, 0.5],
            )
        )
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": "npo", "npo/method.beta": 0.1 + 0.1 * k},
                distributions={
                    "method": method,
                    "npo/method.beta": optuna.distributions.FloatDistribution(0.05, 0.5),
                },
                values=[0.2, 0.1 * k],
            )
        )
    search = SearchSettings.model_validate(
        {"methods": ["simnpo", "npo"], "space": SPACE, "num_trials": 10, "sampler": "gp"}
    )
    joint = sampler_for(search)  # sampled, the default
    assert set(joint.infer_relative_search_space(study, study.trials[0])) == {"method"}
    per_method = sampler_for(search.model_copy(update={"method_choice": "round_robin"}))
    assert isinstance(per_method, RoundRobinSampler)
    spaces = []
    for turn in (0, 1):
        per_method.turn = turn
        spaces.append(set(per_method.infer_relative_search_space(study, study.trials[0])))
    assert spaces == [{"simnpo/method.beta"}, {"npo/method.beta"}]
