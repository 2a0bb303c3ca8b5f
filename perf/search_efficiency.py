"""Search efficiency: the default TOFU sweep at equal wall-clock budgets, before and after
per-epoch search (issue 15).

Five designs of the same sweep (`sweeps/tofu.yaml`: generated TOFU data, the tiny model, SimNPO and
NPO, 2 trials at a time on 2 cores):

- `last-epoch`: the design before per-epoch search: only each trial's last epoch is evaluated and
  told to the sampler, no early stopping, the wide space (`WIDE_SPACE`) with epochs searched in 3-8,
  each trial suggested as soon as a slot frees, the method a categorical of the joint search
  (`search.method_choice=sampled`);
- `per-epoch-wide`: every epoch evaluated, a point of the front and of the Optuna study, trials
  dominated by a margin stopped early, deterministic suggestions (`search.deterministic`), the method
  still sampled, in the wide space (epochs 2-12);
- `per-epoch-wide-round-robin`: `per-epoch-wide` with `search.method_choice=round_robin` (trial i
  unlearns with methods[i mod 2], each method's ranges sampled from its own trials:
  `orchestration.search.RoundRobinSampler`);
- `per-epoch-batch16`: `per-epoch-wide` in the space narrowed to where the good trials of earlier
  searches lie (perf/space_from_points.py), at the unlearning batch of 16 the file had then;
- `per-epoch`: the file as it is: `per-epoch-batch16` at the file's batch of 8.

The first four set `run.unlearn.batch_size=16`, the batch they were first measured at.

Each (design, sampler seed) runs once with `search.time_budget_minutes` = the largest budget; the
front "at budget b" is what that run had finished within its first b minutes of trials (a trial's
points, its epochs' too, count once the trial has finished, as in a sweep stopped at b). The designs
alternate, seed by seed, so both see the same load on a shared machine. Per budget and run:

- hypervolume of the (FQ, MU) front, reference point (FQ 0, MU 0), exact in 2-D
  (`raysimnpo.maths.pareto.hypervolume_2d`), and per CPU-minute (budget x the sweep's CPUs);
- the selected SimNPO and NPO points (`analysis.tables` rule: highest FQ with MU >= MU(Retrain) -
  0.05), among every candidate (trials and their evaluated epochs);
- trials finished, (trial, epoch) points evaluated, and the seconds spent evaluating (`evaluate_seconds` rows).

Then a paper-shaped check, per per-epoch design: the settings it selected for SimNPO and for NPO
(pooled over its seeds at the largest budget) are run again with `python -m raysimnpo.run` at run seeds
0, 1, 2 (each seed fine-tunes its own Original and Retrain), and their FQ and MU are reported.

Prints the tables and writes perf/results/search_efficiency.json. Prepared models are cached
(RAYSIMNPO_CACHE), so only the first run fine-tunes the seed-0 Original and Retrain.

    .venv/bin/python perf/search_efficiency.py --storage /tmp/perf-search [--budgets 2 4 8] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import polars as pl  # noqa: E402

from raysimnpo.analysis.load import Results, completed_trials, load_runs, retrain_utility  # noqa: E402
from raysimnpo.analysis.tables import MU_TOLERANCE, select_configurations  # noqa: E402
from raysimnpo.maths.pareto import hypervolume_2d  # noqa: E402

SWEEP = "tofu"
METHODS = ("simnpo", "npo")
FQ, MU = "forget_quality", "model_utility"
# The default sweep's space before it was narrowed to where its good trials lie (`sweeps/tofu.yaml`,
# perf/space_from_points.py): per method, (setting, low, high).
WIDE_SPACE = {
    "simnpo": [
        ("method.beta", 1.0, 5.0),
        ("method.gamma", 0.0, 1.0),
        ("method.retain_weight", 0.05, 1.0),
        ("unlearn.learning_rate", 3.0e-4, 2.0e-3),
        ("unlearn.epochs", 2, 12),
    ],
    "npo": [
        ("method.beta", 0.05, 0.5),
        ("method.retain_weight", 0.5, 1.5),
        ("unlearn.learning_rate", 3.0e-4, 2.0e-3),
        ("unlearn.epochs", 2, 12),
    ],
}


def space_settings(space: dict[str, list[tuple[str, float, float]]]) -> list[str]:
    """`--set` items that give the sweep file's space these ranges (the scales stay the file's)."""
    return [
        f"search.space.{method}.{key}.{end}={value}"
        for method, ranges in space.items()
        for key, low, high in ranges
        for end, value in (("low", low), ("high", high))
    ]


WIDE = space_settings(WIDE_SPACE)
# The design before issue 15: the wide space with epochs 3-8 (a later `--set` wins), the method sampled.
BEFORE = [
    "search.method_choice=sampled",
    *WIDE,
    *space_settings({method: [("unlearn.epochs", 3, 8)] for method in WIDE_SPACE}),
]
BATCH_16 = ["run.unlearn.batch_size=16"]  # the file's unlearning batch before it was halved
DESIGNS: dict[str, list[str]] = {
    "last-epoch": [
        *BATCH_16,
        *BEFORE,
        "run.evaluation.every_epoch=false",
        "search.early_stop=null",
        "search.deterministic=false",
    ],
    # every epoch a point, the method a categorical of the joint search, in the wide space
    "per-epoch-wide": [*BATCH_16, *WIDE],
    # methods taking turns, each with a sampler of its own, in the wide space
    "per-epoch-wide-round-robin": [*BATCH_16, *WIDE, "search.method_choice=round_robin"],
    # per-epoch search in the narrowed space, at the earlier batch
    "per-epoch-batch16": BATCH_16,
    # the file as shipped
    "per-epoch": [],
}
BASELINE = "last-epoch"
CPUS = 2  # the default sweep's trials share the machine's 2 cores


def sweep_command(storage: Path, design: str, seed: int, budget: float) -> list[str]:
    settings = [
        f"search.seed={seed}",
        f"search.time_budget_minutes={budget}",
        "search.num_trials=500",  # the budget ends the sweep
        "relearn=null",
        *DESIGNS[design],
    ]
    command = ["raysimnpo.sweep", SWEEP, "--storage", str(storage)]
    for item in settings:
        command += ["--set", item]
    return command


def run_sweep(storage: Path, design: str, seed: int, budget: float) -> dict[str, Any]:
    run_dir = storage / SWEEP
    if not (run_dir / "results" / "trials").exists():
        started = time.perf_counter()
        load_before = os.getloadavg()[0]
        harness.run_cli(sweep_command(storage, design, seed, budget), f"{design} seed {seed}: the sweep")
        (storage / "wall.json").write_text(
            json.dumps(
                {
                    "seconds": time.perf_counter() - started,
                    "load_before": load_before,
                    "load_after": os.getloadavg()[0],
                }
            )
        )
    return json.loads((storage / "wall.json").read_text()) | {"run_dir": str(run_dir)}


def at_budget(res: Results, minutes: float) -> dict[str, Any]:
    """What a run (`load_runs` of its folder) had within its first `minutes` of trials: the trials
    finished by then, and the epoch candidates evaluated by then (`evaluated_at`), as a sweep with
    that time budget keeps them (its running trials stop after their epoch, `epochs.epoch_stop_rule`)."""
    trials = res.trials.filter(pl.col("kind") == "trial")
    start = trials["started_at"].min()
    if start is None:  # no trial finished within the whole budget
        finished, evaluated = trials.clear(), set()
    else:
        cutoff = start + timedelta(minutes=minutes)  # type: ignore[operator]
        whole = trials.filter(~pl.col("trial_id").str.contains(r"\.epoch-"))
        finished = whole.filter(pl.col("finished_at") <= cutoff)
        at = res.metrics.filter((pl.col("stage") == "final") & (pl.col("metric") == "evaluated_at"))
        evaluated = set(
            at.filter(pl.col("trial_id").str.contains(r"\.epoch-") & (pl.col("value") <= cutoff.timestamp()))[
                "trial_id"
            ].to_list()
        )
    kept = (
        set(finished["trial_id"].to_list())
        | evaluated
        | set(res.trials.filter(pl.col("kind") != "trial")["trial_id"])
    )
    within = dataclasses.replace(res, trials=res.trials.filter(pl.col("trial_id").is_in(list(kept))))
    points = completed_trials(within).filter(pl.col("kind") == "trial")
    values = points.select(FQ, MU).drop_nulls().to_numpy()
    hv = hypervolume_2d(values, ["max", "max"], [0.0, 0.0]) if len(values) else 0.0
    selection = select_configurations(within)
    params = dict(zip(res.trials["trial_id"].to_list(), res.trials["params_json"].to_list(), strict=True))
    epochs = dict(zip(res.trials["trial_id"].to_list(), res.trials["epochs"].to_list(), strict=True))
    selected = {
        row["method"]: {
            "trial_id": row["trial_id"],
            FQ: row[FQ],
            MU: row[MU],
            "reason": row["reason"],
            "threshold": row["threshold"],
            "params": json.loads(params[row["trial_id"]]),
            "epochs": epochs[row["trial_id"]],  # an epoch candidate's: its epoch
        }
        for row in selection.to_dicts()
        if row["method"] in METHODS
    }
    timing = res.metrics.filter(
        (pl.col("stage") == "timing")
        & (pl.col("metric") == "evaluate_seconds")
        & pl.col("trial_id").is_in(finished["trial_id"].to_list())
    )
    return {
        "minutes": minutes,
        "hypervolume": hv,
        "hypervolume_per_cpu_minute": hv / (minutes * CPUS),
        "trials_finished": finished.height,
        "evaluated_points": points.height,  # every evaluated (trial, epoch), each trial's last included
        "evaluate_seconds": float(timing["value"].sum()),
        "selected": selected,
        "retrain_model_utility": next(iter(retrain_utility(within).values()), None),
    }


def first_reaching(minutes: list[float], curve: list[float], target: float) -> float | None:
    """The first of `minutes` at which the hypervolume `curve` reaches `target` (None: never)."""
    return next((m for m, hv in zip(minutes, curve, strict=True) if hv >= target), None)


def selected_settings(runs: dict[str, Results], minutes: float) -> dict[str, dict[str, Any]]:
    """Per method, the candidate the selection rule picks among all `runs` (run folder -> results)
    pooled, with its hyperparameters (an epoch candidate's `epochs` is the epoch)."""
    best: dict[str, dict[str, Any]] = {}
    for run_dir, res in runs.items():
        for method, point in at_budget(res, minutes)["selected"].items():
            # MU(Retrain) - MU_TOLERANCE; without a Retrain row, -MU_TOLERANCE
            threshold = point["threshold"] if point["threshold"] is not None else -MU_TOLERANCE
            qualifies = point[MU] >= threshold
            current = best.get(method)
            if current is None or (qualifies, point[FQ]) > (current["qualifies"], current[FQ]):
                best[method] = point | {"run": run_dir, "qualifies": qualifies}
    return best


def run_overrides(chosen: dict[str, Any], seed: int) -> list[str]:
    """`raysimnpo.run` settings of a selected candidate: its method and optimiser hyperparameters and
    the trial's whole schedule (an epoch candidate is read off that run's per-epoch evaluation, as
    the sweep made it: the learning rate decays over the trial's epochs, not the candidate's)."""
    params = chosen["params"]
    unlearn = params["unlearn"]
    out = [f"seed={seed}", "evaluation.every_epoch=true", f"unlearn.epochs={unlearn['epochs']}"]
    out.append(f"unlearn.batch_size={unlearn['batch_size']}")
    out += [f"method.{k}={v}" for k, v in params["method"].items() if k != "name"]
    out.append(f"unlearn.learning_rate={unlearn['learning_rate']}")
    return out


def paper_check(chosen: dict[str, dict[str, Any]], out: Path, seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for method, setting in chosen.items():
        epoch = int(setting["epochs"])  # the candidate's epoch (the trial's last for a whole trial)
        for seed in seeds:
            target = out / f"{method}-seed{seed}"
            result_file = out / f"{method}-seed{seed}.json"
            if not result_file.exists():
                command = ["raysimnpo.run", SWEEP, "--method", method, "--json", "--out", str(target)]
                for item in run_overrides(setting, seed):
                    command += ["--set", item]
                stdout = harness.run_cli(command, f"{method} seed {seed}: the run")
                out.mkdir(parents=True, exist_ok=True)
                result_file.write_text(stdout.strip().splitlines()[-1])
            payload = json.loads(result_file.read_text())
            row = next(r for r in payload["training"] if int(r["epoch"]) == epoch)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "epoch": epoch,
                    FQ: float(row[FQ]),
                    MU: float(row[MU]),
                    "retrain_model_utility": float(payload["metrics"]["Retrain"][MU]),
                }
            )
    return rows


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def tables(report: dict[str, Any]) -> str:
    lines = [
        "| budget (min) | design | hypervolume | HV per CPU-minute | trials | (trial, epoch) points evaluated | eval seconds | selected SimNPO (FQ / MU) | selected NPO (FQ / MU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for minutes in report["budgets"]:
        for design in DESIGNS:
            cells = [r for r in report["runs"] if r["design"] == design]
            at = [next(b for b in r["budgets"] if b["minutes"] == minutes) for r in cells]

            def pick(method: str, at: list[dict[str, Any]] = at) -> str:
                chosen = [b["selected"].get(method) for b in at]
                return ", ".join(f"{c[FQ]:.3g} / {c[MU]:.3f}" if c else "-" for c in chosen)

            lines.append(
                f"| {minutes:g} | {design} | {_mean_sd([b['hypervolume'] for b in at])} | "
                f"{_mean_sd([b['hypervolume_per_cpu_minute'] for b in at])} | {_mean_sd([b['trials_finished'] for b in at])} | "
                f"{_mean_sd([b['evaluated_points'] for b in at])} | {_mean_sd([b['evaluate_seconds'] for b in at])} | "
                f"{pick('simnpo')} | {pick('npo')} |"
            )
    lines += [
        "",
        "| budget b (min) | design | HV at b / last-epoch's (mean over seeds) | minutes to reach last-epoch's HV at b: mean curves; per seed | 2x last-epoch's HV at b | HV of the noise-ceiling point |",
        "|---|---|---|---|---|---|",
    ]
    ceiling = report.get("noise_ceiling_hypervolume")
    for design, ratios in report["hypervolume_ratio"].items():
        for minutes, ratio in ratios.items():
            reach = report["minutes_to_reach_last_epoch_hv"][design][minutes]
            seeds = ", ".join(
                "-" if m is None else f"{m:g}" for m in report["minutes_to_reach_per_seed"][design][minutes]
            )
            twice = 2 * report["hypervolume_curve"][BASELINE][report["curve_minutes"].index(float(minutes))]
            lines.append(
                f"| {minutes} | {design} | {ratio:.2f}x | {'not reached' if reach is None else f'{reach:g}'}; "
                f"{seeds} | {twice:.3f} | {'-' if ceiling is None else f'{ceiling:.3f}'} |"
            )
    if report.get("paper_check"):
        lines += [
            "",
            "| design | method | setting | run seed | FQ | MU | MU(Retrain) |",
            "|---|---|---|---|---|---|---|",
        ]
        for design, rows in report["paper_check"].items():
            for row in rows:
                params = report["selected_settings"][design][row["method"]]["params"]
                shown = ", ".join(f"{k} {v:.3g}" for k, v in params["method"].items() if k != "name")
                lr, total = params["unlearn"]["learning_rate"], params["unlearn"]["epochs"]
                lines.append(
                    f"| {design} | {row['method']} | {shown}, lr {lr:.3g}, epoch {row['epoch']} of {total} | "
                    f"{row['seed']} | {row[FQ]:.3g} | {row[MU]:.3f} | {row['retrain_model_utility']:.3f} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--storage", required=True, help="folder for the sweeps (kept: a rerun reuses finished ones)"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="minutes of trials")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument(
        "--paper-seeds", type=int, nargs="*", default=[0, 1, 2], help="run seeds of the paper check"
    )
    args = parser.parse_args()
    storage = Path(args.storage).resolve()
    budgets = sorted(args.budgets)
    report: dict[str, Any] = {
        "machine_before": harness.machine(),
        "budgets": budgets,
        "cpus": CPUS,
        "runs": [],
    }
    loaded: dict[str, Results] = {}  # run folder -> its results, read once
    for seed in args.seeds:
        for design in DESIGNS:
            wall = run_sweep(storage / f"{design}-seed{seed}", design, seed, budgets[-1])
            loaded[wall["run_dir"]] = res = load_runs([wall["run_dir"]])
            row = {"design": design, "seed": seed, **wall, "budgets": [at_budget(res, b) for b in budgets]}
            report["runs"].append(row)
            last = row["budgets"][-1]
            print(
                f"{design:<10} seed {seed}: {last['trials_finished']} trials, {last['evaluated_points']} points, "
                f"HV {last['hypervolume']:.4g} in {budgets[-1]:g} min (sweep wall {wall['seconds'] / 60:.1f} min)",
                flush=True,
            )
    challengers = [d for d in DESIGNS if d != BASELINE]
    report["hypervolume_ratio"] = {design: {} for design in challengers}  # over last-epoch's
    for minutes in budgets:
        means = {
            design: statistics.mean(
                next(b["hypervolume"] for b in r["budgets"] if b["minutes"] == minutes)
                for r in report["runs"]
                if r["design"] == design
            )
            for design in DESIGNS
        }
        for design in challengers:
            report["hypervolume_ratio"][design][f"{minutes:g}"] = means[design] / max(means[BASELINE], 1e-12)
    # HV against minutes of trials, mean over seeds, and how long per-epoch takes to reach the HV
    # last-epoch has at each budget: the per-CPU-minute comparison read the other way round.
    grid = [round(0.25 * k, 2) for k in range(1, int(budgets[-1] / 0.25) + 1)]
    report["hypervolume_curve"] = {
        design: [
            statistics.mean(
                at_budget(loaded[r["run_dir"]], m)["hypervolume"]
                for r in report["runs"]
                if r["design"] == design
            )
            for m in grid
        ]
        for design in DESIGNS
    }
    report["curve_minutes"] = grid
    report["minutes_to_reach_last_epoch_hv"] = {design: {} for design in challengers}
    for design in challengers:
        for minutes in budgets:
            target = report["hypervolume_curve"][BASELINE][grid.index(minutes)]
            reached = first_reaching(grid, report["hypervolume_curve"][design], target)
            report["minutes_to_reach_last_epoch_hv"][design][f"{minutes:g}"] = reached
    # The same per sampler seed: the minutes a run needs to reach the HV the last-epoch run of that
    # seed has at b (None: not within the largest budget).
    report["minutes_to_reach_per_seed"] = {design: {f"{m:g}": [] for m in budgets} for design in challengers}
    for seed in args.seeds:
        runs = {r["design"]: loaded[r["run_dir"]] for r in report["runs"] if r["seed"] == seed}
        for design in challengers:
            curve = [at_budget(runs[design], m)["hypervolume"] for m in grid]
            for minutes in budgets:
                target = at_budget(runs[BASELINE], minutes)["hypervolume"]
                reached = first_reaching(grid, curve, target)
                report["minutes_to_reach_per_seed"][design][f"{minutes:g}"].append(reached)
    # The HV of a perfect unlearner's point: FQ of a second Retrain against Retrain (the noise
    # ceiling) at MU(Retrain). Twice the baseline's HV above it is out of reach of any search.
    ceilings = []
    for res in loaded.values():
        nc = res.metrics.filter(
            (pl.col("trial_id") == "retrain") & (pl.col("metric") == "forget_quality_noise_ceiling")
        )
        mu = retrain_utility(res)
        if nc.height and mu:
            ceilings.append(float(nc["value"][0]) * next(iter(mu.values())))
    report["noise_ceiling_hypervolume"] = max(ceilings) if ceilings else None
    if args.paper_seeds:
        report["selected_settings"], report["paper_check"] = {}, {}
        for design in challengers:
            runs = {r["run_dir"]: loaded[r["run_dir"]] for r in report["runs"] if r["design"] == design}
            chosen = report["selected_settings"][design] = selected_settings(runs, budgets[-1])
            report["paper_check"][design] = paper_check(
                chosen, storage / "paper-check" / design, args.paper_seeds
            )
    report["machine_after"] = harness.machine()
    text = tables(report)
    print(text)
    path = harness.write_result("search_efficiency", report)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
