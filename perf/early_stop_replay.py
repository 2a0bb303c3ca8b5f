"""Early stopping replayed offline on finished sweeps' per-epoch points: what `search.early_stop`
saves and what it costs, against no stopping and against a rung-wise rule (issue 15: "the margin and
the rule are settings").

Every trial of the folders given that ran all its planned epochs (so its whole trajectory is known)
is a candidate; the same configuration in several folders counts once. Each of `--draws` random
draws of `--trials` of them is replayed in order, as a sweep of one trial at a time would run them,
under three rules:

* **none**: every trial runs its epochs;
* **any-epoch**: the sweep's rule (`orchestration.epochs.FrontRule`, the class the EpochFront actor
  runs): after `min_epochs`, a trial stops when each of its points so far is dominated by `margin`
  (rank percentiles) by some earlier trial's point, of any epoch;
* **rung-wise**: the same, but a trial at epoch e is judged only against earlier trials' points of
  epochs <= e (successive halving's comparison at equal training).

Reported per rule, as means over the draws: epochs run, the selected SimNPO and NPO FQ (Table 2's
rule: highest FQ with MU >= MU(Retrain) - 0.05, over the epochs the replay evaluated), the share of
draws whose selected SimNPO reaches FQ 0.3, and the hypervolume of all evaluated points
(reference FQ 0, MU 0). Writes perf/results/early_stop_replay.json.

    .venv/bin/python perf/early_stop_replay.py RUN_DIR [RUN_DIR ...] [--draws 200] [--trials 30]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from space_from_points import trial_points  # noqa: E402

from raysimnpo.analysis.load import config_key  # noqa: E402
from raysimnpo.analysis.tables import MU_TOLERANCE  # noqa: E402
from raysimnpo.errors import UserInputError  # noqa: E402
from raysimnpo.maths.pareto import hypervolume_2d  # noqa: E402
from raysimnpo.orchestration.epochs import FrontRule  # noqa: E402

FQ, MU = "forget_quality", "model_utility"
DIRECTIONS = ["max", "max"]
RULES = ("none", "any-epoch", "rung-wise")


@dataclass(frozen=True)
class Trajectory:
    method: str
    points: tuple[tuple[float, float], ...]  # (FQ, MU) after epochs 1..E
    threshold: float  # MU(Retrain) - MU_TOLERANCE of its sweep


class RungRule(FrontRule):
    """`FrontRule` judging a trial at epoch e against other trials' points of epochs <= e only."""

    def opponents(self, trial_id: str, epoch: int) -> list[list[float]]:
        return [p for t, ps in self.points.items() if t != trial_id for p in ps[:epoch]]


def trajectories(run_dir: str) -> dict[str, Trajectory]:
    """The whole trajectories of a sweep folder's trials, keyed by configuration."""
    _, mu_retrain, points, params = trial_points(run_dir)
    threshold = mu_retrain - MU_TOLERANCE
    found = {}
    for (parent,), group in points.group_by(["parent"], maintain_order=True):
        if parent not in params:
            continue
        planned = int(json.loads(params[parent])["unlearn"]["epochs"])
        by_epoch = {
            int(e) if e is not None else planned: (fq, mu)
            for e, fq, mu in zip(group["epoch"], group[FQ], group[MU], strict=True)
        }
        if sorted(by_epoch) != list(range(1, planned + 1)):  # stopped early or not evaluated per epoch
            continue
        found[config_key(params[parent])] = Trajectory(
            group["method"][0], tuple(by_epoch[e] for e in range(1, planned + 1)), threshold
        )
    return found


def replay(trials: Sequence[Trajectory], rule: str, margin: float, min_epochs: int) -> dict[str, Any]:
    """One sweep of `trials`, one after another, under `rule`."""
    front = (
        None
        if rule == "none"
        else (FrontRule if rule == "any-epoch" else RungRule)(DIRECTIONS, margin, min_epochs)
    )
    evaluated: list[tuple[Trajectory, list[tuple[float, float]]]] = []
    for index, trial in enumerate(trials):
        seen: list[tuple[float, float]] = []
        for epoch, point in enumerate(trial.points, 1):
            seen.append(point)
            if front is not None and front.judge(str(index), epoch, point):
                break
        evaluated.append((trial, seen))
    selected: dict[str, float] = {}
    for trial, seen in evaluated:
        qualifying = [fq for fq, mu in seen if mu >= trial.threshold]
        selected[trial.method] = max([selected.get(trial.method, 0.0), *qualifying])
    every = [point for _, seen in evaluated for point in seen]
    return {
        "epochs": len(every),
        "selected": selected,
        "hypervolume": hypervolume_2d(every, DIRECTIONS, [0.0, 0.0]),
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    mean = statistics.fmean
    return {
        "epochs_run": mean(r["epochs"] for r in runs),
        "selected_simnpo_forget_quality": mean(r["selected"].get("simnpo", 0.0) for r in runs),
        "selected_npo_forget_quality": mean(r["selected"].get("npo", 0.0) for r in runs),
        "share_simnpo_at_least_0.3": mean(r["selected"].get("simnpo", 0.0) >= 0.3 for r in runs),
        "hypervolume": mean(r["hypervolume"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", help="sweep folders (each with results/)")
    parser.add_argument("--draws", type=int, default=200, help="replayed sweeps")
    parser.add_argument("--trials", type=int, default=30, help="trials per replayed sweep")
    parser.add_argument("--margin", type=float, default=0.2, help="search.early_stop.margin")
    parser.add_argument("--min-epochs", type=int, default=3, help="search.early_stop.min_epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    args = parser.parse_args()

    population: dict[str, Trajectory] = {}
    for run_dir in args.run_dirs:
        try:
            population.update(trajectories(run_dir))
        except UserInputError as error:
            parser.error(str(error))
    pool = [population[key] for key in sorted(population)]
    if len(pool) < args.trials:
        parser.error(f"--trials {args.trials}: the folders hold {len(pool)} whole trajectories")
    draws = random.Random(args.seed)
    sweeps = [draws.sample(pool, args.trials) for _ in range(args.draws)]
    summary = {
        rule: summarise([replay(s, rule, args.margin, args.min_epochs) for s in sweeps]) for rule in RULES
    }
    rows = [
        [
            rule,
            f"{r['epochs_run']:.0f}",
            f"{r['selected_simnpo_forget_quality']:.3f}",
            f"{r['share_simnpo_at_least_0.3']:.0%}",
            f"{r['selected_npo_forget_quality']:.3f}",
            f"{r['hypervolume']:.3f}",
        ]
        for rule, r in summary.items()
    ]
    print(
        f"{len(pool)} whole trajectories ({sum(t.method == 'simnpo' for t in pool)} SimNPO); {args.draws} draws "
        f"of {args.trials}; margin {args.margin}, min_epochs {args.min_epochs}\n"
    )
    print(
        harness.markdown_table(
            ["rule", "epochs run", "selected SimNPO FQ", "SimNPO >= 0.3", "selected NPO FQ", "HV"], rows
        )
    )
    report = {
        "runs": args.run_dirs,
        "trajectories": len(pool),
        "draws": args.draws,
        "trials": args.trials,
        "margin": args.margin,
        "min_epochs": args.min_epochs,
        "seed": args.seed,
        "rules": summary,
    }
    print(f"\nwrote {harness.write_result('early_stop_replay', report)}")


if __name__ == "__main__":
    main()
