"""The sweep's search: its conditional space as Optuna suggestions (`DefineByRun`), the sampler, and
`SweepSearch`, the Tune searcher that asks and tells the sweep's Optuna study (time budget, pruned
stopped trials, epoch points, deterministic suggestions)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import optuna
import ray
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..config.sweep import ParamRange, SearchSettings
from ..orchestration.epochs import FRONT_NAMESPACE, add_epoch_points
from ..orchestration.study import ENDED


def sampler_for(search: SearchSettings) -> optuna.samplers.BaseSampler:
    if search.method_choice == "sampled":
        return _base_sampler(search, search.num_trials, search.seed)
    share = search.num_trials // len(search.methods)
    return RoundRobinSampler(
        {m: _base_sampler(search, share, search.seed + i) for i, m in enumerate(search.methods)}
    )


def _base_sampler(search: SearchSettings, trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler for a search of `trials` trials."""
    name = search.resolved_sampler()
    if name == "tpe":
        # random start-up points: a third of the trials, 2 to 10
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 3)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed)


class _MethodTrials:
    """The study as one method's sampler sees it: only that method's trials (and their epoch points),
    so they are ranked among themselves. Everything else (directions, storage) is the study's."""

    def __init__(self, study: optuna.Study, method: str) -> None:
        self._study, self._method = study, method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        return [t for t in trials if t.params.get("method") == self._method]

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        return self._mine(self._study._get_trials(*args, **kwargs))

    def get_trials(self, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        return self._mine(self._study.get_trials(*args, **kwargs))


class RoundRobinSampler(optuna.samplers.BaseSampler):
    """`search.method_choice: round_robin`: the trial asked for at `turn` (its place in suggestion
    order, set by `SweepSearch` before it asks) unlearns with methods[turn mod len(methods)], and
    that method's own sampler (`samplers`, one per method, each with its own seed and state) samples
    its ranges from that method's trials only (`_MethodTrials`).

    Why: with the method as one categorical of a joint search, the sampler splits the trials into
    good and bad by the front of all methods. When one method's points dominate the other's, the
    other gets few trials and none of its points is good, so its ranges are drawn blind however many
    of its trials ran (default sweep, 8-minute budget: 12-15 SimNPO trials of 37-41, 1-3 of the
    first 10). A joint relative sampler (GP, CMA-ES, NSGA-II) fares no better: the only parameter all
    trials share is the method. Comparing methods on an equal share of the budget needs each searched
    on its own. Not the default: on the default sweep it lowers the hypervolume
    (`perf/search_efficiency.py`)."""

    def __init__(self, samplers: dict[str, optuna.samplers.BaseSampler]) -> None:
        self.samplers = samplers
        self.turn: int | None = None

    def _method(self) -> str:
        if self.turn is None:
            raise RuntimeError("RoundRobinSampler: a trial asked for without a turn")
        methods = list(self.samplers)
        return methods[self.turn % len(methods)]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        method = self._method()
        space = self.samplers[method].infer_relative_search_space(_MethodTrials(study, method), trial)  # type: ignore[arg-type]
        space.pop("method", None)  # the turn decides it
        return space

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        method = self._method()
        return self.samplers[method].sample_relative(_MethodTrials(study, method), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        method = self._method()
        if param_name == "method":
            return method
        view = _MethodTrials(study, method)
        return self.samplers[method].sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        method = self._method()
        self.samplers[method].before_trial(_MethodTrials(study, method), trial)  # type: ignore[arg-type]

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        # told later than asked: another trial's turn may be set by now
        method = trial.params.get("method")
        if method in self.samplers:
            self.samplers[method].after_trial(_MethodTrials(study, method), trial, state, values)  # type: ignore[arg-type]

    def reseed_rng(self) -> None:
        for sampler in self.samplers.values():
            sampler.reseed_rng()


def _suggest(trial: optuna.Trial, name: str, rng: ParamRange) -> Any:
    if rng.choices is not None:
        return trial.suggest_categorical(name, rng.choices)
    assert rng.low is not None and rng.high is not None
    if rng.integer:
        return trial.suggest_int(name, int(rng.low), int(rng.high), log=rng.log)
    return trial.suggest_float(name, rng.low, rng.high, log=rng.log)


class DefineByRun:
    """Conditional space: the method first, then that method's own ranges, named
    `<method>/<dotted setting>` so that β of NPO and β of SimNPO are separate parameters.
    A class rather than a closure: Tune pickles the searcher into its experiment state."""

    def __init__(self, search: SearchSettings) -> None:
        self.search = search

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        method = trial.suggest_categorical("method", self.search.methods)
        for key, rng in self.search.space.get(method, {}).items():
            _suggest(trial, f"{method}/{key}", rng)
        return None


class SweepSearch(OptunaSearch):
    """Tune's OptunaSearch with the sweep's rules.

    - Once the time budget is spent (`deadline`, unix seconds) it proposes no more trials; the running
      ones end themselves after their epoch when they evaluate every epoch
      (`epochs.epoch_stop_rule`), else Tune stops them.
    - A trial stopped before its planned epochs (early stopping, the budget) is told PRUNED: the
      `unlearn.epochs` it was given never ran.
    - `epoch_points`: with a trial's result, its epochs are added to the study as points of their
      own (`epochs.add_epoch_points`).
    - `first_turn`: with a `RoundRobinSampler`, the turn of this experiment's first suggestion (the
      trials of the sweep's earlier experiments), so trial i of the sweep takes turn i.
    - `front`: the name of the sweep's EpochFront actor; with `lag`, told which trials each
      suggestion saw (`FrontRule.snapshot`): the `earlier` ones (finished in the sweep's earlier Tune
      experiments) and those of this experiment told so far. The snapshots are part of the searcher's
      saved state, and a restored searcher gives them to the new EpochFront again, so a trial rerun
      after the driver was killed is judged against the same trials.
    - `lag` (`search.deterministic`: L = 2k - 1 for k concurrent trials): suggestion i is made from
      exactly the results of trials 0..i-L, told in suggestion order, and waits until they have
      ended; trial i's early stopping judges it against those trials only (`FrontRule.snapshot`). So
      the suggestions do not depend on which running trial ends first, and a sweep reruns to the same
      numbers. L >= k keeps k trials running; the slack of L = 2k - 1 lets a long trial be overtaken
      by 2k - 2 later ones before a slot waits for it (`perf/deterministic_search.py`). None: each
      trial is told as it ends and a suggestion uses whatever has ended by then.
    """

    def __init__(
        self,
        *args: Any,
        deadline: float | None = None,
        epoch_points: bool = False,
        front: str | None = None,
        lag: int | None = None,
        num_trials: int | None = None,
        earlier: Sequence[str] = (),
        first_turn: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deadline, self.epoch_points, self.front = deadline, epoch_points, front
        self.lag, self.num_trials, self.earlier = lag, num_trials, list(earlier)
        self.first_turn = first_turn
        self.closed = False  # no more suggestions: the budget is spent
        self.order: list[str] = []  # trials in suggestion order
        self.told = 0  # trials order[:told] have been told
        self.ended: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # (result, error) not told yet
        self.seen: dict[str, int] = {}  # with `lag`: trial -> how many of `order` it is judged against

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            self.closed = True
            self._tell_ready()
            return Searcher.FINISHED
        if self.lag is not None:
            self._tell_ready()
            if self.told < len(self.order) - self.lag + 1:
                return None  # trial i - L still runs
        if isinstance(self._sampler, RoundRobinSampler):
            self._sampler.turn = self.first_turn + len(self.order)
        suggestion = super().suggest(trial_id)
        if self.lag is not None:
            self.seen[trial_id] = self.told
            if self.front is not None:
                ray.get(self._front().snapshot.remote(trial_id, self.judged_against(trial_id)))
        self.order.append(trial_id)
        return suggestion

    def judged_against(self, trial_id: str) -> list[str]:
        """With `lag`: the trials `trial_id`'s early stopping sees, those told when it was suggested."""
        return [*self.earlier, *self.order[: self.seen[trial_id]]]

    def restore(self, checkpoint_path: str) -> None:
        """Tune restores a killed sweep's searcher before it reruns the trials that were running:
        the new EpochFront gets their snapshots first."""
        super().restore(checkpoint_path)
        if self.front is not None and self.lag is not None:
            front = self._front()
            ray.get([front.snapshot.remote(t, self.judged_against(t)) for t in self.seen])

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id in self.ended:
            return  # told once: a repeated completion would add its epoch points twice
        self.ended[trial_id] = (result, error)
        if self.lag is None:
            self._tell(trial_id)
        else:
            self._ot_trials[trial_id].set_user_attr(ENDED, True)  # counted as done by `Progress`
            self._tell_ready()

    def _tell_ready(self) -> None:
        """Tell, in suggestion order, the ended trials that every later suggestion may see."""
        assert self.lag is not None or self.closed
        done = self.closed or (self.num_trials is not None and len(self.order) >= self.num_trials)
        visible = len(self.order) if done or self.lag is None else len(self.order) - self.lag + 1
        while self.told < visible and self.order[self.told] in self.ended:
            self._tell(self.order[self.told])
            self.told += 1

    def _tell(self, trial_id: str) -> None:
        result, error = self.ended.pop(trial_id)
        stopped = bool(result and result.get("stopped_early"))
        super().on_trial_complete(trial_id, None if stopped else result, error)  # None: PRUNED
        if self.epoch_points and result and not error:
            ot_trial = self._ot_trials[trial_id]
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            add_epoch_points(
                self._ot_study, trial_id, ot_trial.params, ot_trial.distributions, result, metrics
            )

    def _front(self) -> Any:
        assert self.front is not None
        return ray.get_actor(self.front, namespace=FRONT_NAMESPACE)


def deterministic_lag(concurrent: int) -> int:
    """How many suggestions back a deterministic search's suggestion sees results (`SweepSearch`)."""
    return 2 * concurrent - 1
