"""Every epoch a point of the search: early stopping against the sweep's front, and epoch points in
the Optuna study.

A trial that evaluates after every epoch (`evaluation.every_epoch`) has one (objective values) point
per epoch. Two things use them:

* `EpochFront` (one Ray actor per sweep, `front_actor`): each trial sends its epoch points; a trial
  whose points so far are all dominated by other trials' points by a clear margin
  (`pareto.dominated_by_margin`, in rank percentiles) is told to stop (`search.early_stop`). The
  rule is Pareto-rank, not successive halving: multi-objective successive halving needs a scalar
  rung score, and the front is what the sweep is after. Stopping is decided in the trial (it stops
  after the epoch, writes its rows and checkpoint as any trial), not by Tune killing it.
* `add_epoch_points` (called by the sweep's searcher, `search.SweepSearch`, when it tells a trial's
  result): each of the trial's epochs e is added to the Optuna study as a completed trial with the
  same settings and `unlearn.epochs = e`, so the sampler learns from every epoch and not only the
  last. Why epochs as points with their epoch count rather than a fidelity: Optuna's
  multi-objective samplers take no intermediate values, and the epoch count is already a searched
  setting, so an epoch-e point is a real observation of "e epochs".
  It is an approximation in one respect, stated here: the learning rate at epoch e of an E-epoch run
  has not decayed to zero as an e-epoch run's has. Epochs outside the searched range, and methods
  whose space does not search `unlearn.epochs`, add no points (the same settings with another value
  would be read as noise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from ..config.sweep import SweepConfig
from ..maths.pareto import Direction, dominated_by_margin
from ..orchestration.study import EPOCH_POINT


@dataclass(frozen=True)
class EpochEvaluation:
    """What the workers need to evaluate after every epoch (`recipes.evaluate.EpochEvaluator`): the Retrain
    reference, the sweep's objectives (metric, direction), the sweep's EpochFront actor (its name;
    None: no early stopping) with the trial's id, and the end of the sweep's time budget (unix
    seconds; None: no budget)."""

    retrain_reference: Any
    objectives: Sequence[tuple[str, str]]
    front: str | None
    trial_id: str
    deadline: float | None = None


EPOCHS_SETTING = "unlearn.epochs"
FRONT_NAMESPACE = "raysimnpo"


class FrontRule:
    """The epoch points of every trial of a sweep, and the early-stopping rule over them.

    `deterministic` (`search.deterministic`): a trial is judged only against the trials the search
    names when it suggests the trial (`snapshot`: those whose results it had been told), not against
    those running beside it, whose points arrive in an order that depends on timing."""

    def __init__(
        self, directions: Sequence[Direction], margin: float, min_epochs: int, deterministic: bool = False
    ) -> None:
        self.directions, self.margin, self.min_epochs = list(directions), margin, min_epochs
        self.points: dict[str, list[list[float]]] = {}
        self.deterministic = deterministic
        self.visible: dict[str, set[str]] = {}  # deterministic: whom each trial is judged against

    def add(self, trial_id: str, points: Sequence[Sequence[float]]) -> None:
        """Points of a trial known from elsewhere (a resumed sweep's finished trials)."""
        self.points.setdefault(trial_id, []).extend([list(map(float, p)) for p in points])

    def snapshot(self, trial_id: str, seen: Sequence[str]) -> None:
        """With `deterministic`, `trial_id` is judged against the trials `seen` only (a trial without
        a snapshot never stops)."""
        self.visible[trial_id] = set(seen)

    def restart(self, trial_id: str) -> None:
        """A trial starts (or a retried one starts its epochs again)."""
        self.points.pop(trial_id, None)

    def judge(self, trial_id: str, epoch: int, point: Sequence[float]) -> bool:
        """Record `trial_id`'s point of `epoch` (from 1); True when the trial should stop: it has run
        at least `min_epochs` epochs and every one of its points is dominated by another trial's."""
        own = self.points.setdefault(trial_id, [])
        del own[epoch - 1 :]  # a worker group restarted mid-trial reports its epochs again
        own.append([float(v) for v in point])
        if epoch < self.min_epochs:
            return False
        others = self.opponents(trial_id, epoch)
        return bool(others) and all(dominated_by_margin(p, others, self.directions, self.margin) for p in own)

    def opponents(self, trial_id: str, epoch: int) -> list[list[float]]:
        """The points `trial_id` is judged against at `epoch`: every epoch of the other trials (with
        `deterministic`, of those its snapshot names)."""
        seen = self.visible.get(trial_id, set()) if self.deterministic else None
        return [
            p for t, ps in self.points.items() if t != trial_id and (seen is None or t in seen) for p in ps
        ]


EpochFront = ray.remote(num_cpus=0)(FrontRule)


def front_actor_name(sweep: SweepConfig) -> str:
    return f"front-{sweep.name}"


def start_front(sweep: SweepConfig, known: dict[str, list[list[float]]]) -> Any:
    """The sweep's EpochFront actor (created by the driver, which keeps it alive), seeded with the
    epoch points of the trials already run."""
    from ..maths.metrics import metric_direction

    settings = sweep.search.early_stop
    assert settings is not None
    directions = [metric_direction(o.metric) for o in sweep.search.objectives]
    actor = EpochFront.options(  # type: ignore[attr-defined]
        name=front_actor_name(sweep), namespace=FRONT_NAMESPACE, get_if_exists=True
    ).remote(directions, settings.margin, settings.min_epochs, sweep.search.deterministic)
    for trial_id, points in known.items():
        actor.add.remote(trial_id, points)
    return actor


def epoch_point_params(
    params: dict[str, Any], distributions: dict[str, Any], epoch: int
) -> dict[str, Any] | None:
    """The Optuna params of a trial's epoch-`epoch` point: the trial's own with the method's
    `unlearn.epochs` set to `epoch`; None when the method does not search the epochs or `epoch` is
    outside the searched range."""
    key = f"{params.get('method')}/{EPOCHS_SETTING}"
    distribution = distributions.get(key)
    choices = getattr(distribution, "choices", None)
    if distribution is None or (
        epoch not in choices if choices is not None else not distribution.low <= epoch <= distribution.high
    ):
        return None
    return {**params, key: epoch}


def add_epoch_points(
    study: Any,
    trial_id: str,
    params: dict[str, Any],
    distributions: dict[str, Any],
    result: dict[str, Any],
    metrics: Sequence[str],
) -> None:
    """Add the epochs of a finished trial (`result`: its last Tune result, with `epoch_points`) to the
    Optuna `study` as completed points: its `params` and `distributions` with the epoch count set to
    each epoch (`epoch_point_params`). A trial that ran its planned epochs holds its last epoch in its
    own Optuna trial; one stopped before them (early stopping, the time budget) was told PRUNED
    (`SweepSearch`), so every epoch it ran is a point. Epochs the study already holds for this trial
    are not added again (a restored sweep's searcher tells the trials it had told after its last
    saved state once more)."""
    import optuna

    added = {
        t.user_attrs.get("epoch")
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(EPOCH_POINT) and t.user_attrs.get("of_trial") == trial_id
    }
    last = None if result.get("stopped_early") else int(result["epoch"])
    for row in result.get("epoch_points") or []:
        epoch = int(row["epoch"])
        point = epoch_point_params(params, distributions, epoch)
        values = [row.get(m) for m in metrics]
        if epoch == last or epoch in added or point is None or any(v is None for v in values):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=point,
                distributions={k: distributions[k] for k in point},
                values=[float(v) for v in values],
                user_attrs={EPOCH_POINT: True, "of_trial": trial_id, "epoch": epoch},
            )
        )


def epoch_stopper(front_name: str, metrics: Sequence[str], trial_id: str) -> Any:
    """`stop_after` for the training loop: sends each epoch's objective values to the sweep's
    EpochFront and returns its verdict (a trial whose epochs are all dominated by a clear margin)."""
    front = ray.get_actor(front_name, namespace=FRONT_NAMESPACE)
    ray.get(front.restart.remote(trial_id))  # a retried trial starts its epochs again

    def stop(row: dict[str, float]) -> bool:
        if any(m not in row for m in metrics):
            return False
        point = [float(row[m]) for m in metrics]
        return bool(ray.get(front.judge.remote(trial_id, int(row["epoch"]), point)))

    return stop


def epoch_stop_rule(
    front_name: str | None, deadline: float | None, metrics: Sequence[str], trial_id: str
) -> Callable[[dict[str, float]], bool] | None:
    """`stop_after` for the training loop of a trial evaluated after every epoch: stop when the
    sweep's EpochFront says its epochs are dominated (`epoch_stopper`; asked every epoch, so the
    front records every point), or when the sweep's time budget has run out (`deadline`). A trial
    stopped by the budget keeps the epochs it evaluated, rows, weights and study points, instead of
    being killed with them; None: neither rule applies."""
    if front_name is None and deadline is None:
        return None
    dominated = None if front_name is None else epoch_stopper(front_name, metrics, trial_id)

    def stop(row: dict[str, float]) -> bool:
        verdict = dominated is not None and dominated(row)
        return verdict or (deadline is not None and time.time() >= deadline)

    return stop


def known_points(root: str, metrics: Sequence[str]) -> dict[str, list[list[float]]]:
    """Every trial's epoch points in the results tables (a resumed sweep seeds its EpochFront)."""
    from .. import results

    try:
        rows = results.read_table(root, "metrics").to_pylist()
    except Exception:  # no table yet: a new sweep
        return {}
    by_epoch: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["stage"] == "epoch" and r["metric"] in metrics and r["epoch"] is not None:
            by_epoch.setdefault((r["trial_id"], int(r["epoch"])), {})[r["metric"]] = float(r["value"])
    points: dict[str, list[list[float]]] = {}
    for (trial_id, _), values in sorted(by_epoch.items()):
        if all(m in values for m in metrics):
            points.setdefault(trial_id, []).append([values[m] for m in metrics])
    return points
