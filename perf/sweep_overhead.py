"""Sweep overhead: where each trial's wall time goes in the default sweep, before and after the fix.

Runs the default sweep (sweeps/tofu.yaml) through the product's own driver (`tuner.run_sweep`) on a
private local Ray (explicit free ports, `address="local"`), several times side by side:

* `before`: `evaluation.engine=ray_data`, the config default and what sweeps/tofu.yaml used before — every trial saves its checkpoint and
  streams the evaluation through a fresh Ray Data actor that starts a process, imports torch and
  transformers, and loads the checkpoint again;
* `after`:  `evaluation.engine=auto`, what sweeps/tofu.yaml sets now — a trial that unlearned in its own process on
  CPU evaluates the model still in memory (no actor, no reload); the checkpoint is still written.

Both use the random sampler with the same seed, so they run the same hyperparameters; the trials'
metrics are compared (they must agree to 1e-5). Each trial's phases come from the product telemetry:
the `metrics` table's stage "timing" rows (`orchestration.trial.PhaseClock`), plus the trials table's
started_at / finished_at. What lies outside the trial function (Tune scheduling, result writing,
reporting, the searcher, the sweep's prepare stage and Ray start-up) is the rest of the sweep's wall.

    .venv/bin/python perf/sweep_overhead.py [--trials 4] [--order before,after,after2]
        [--storage /tmp/raysimnpo-sweep-overhead] [--set run.prepare.epochs=5 ...]

`after2` is `after` with two concurrent trials (max_concurrent_trials=2, the limit of a 2-core Ray);
it gives the concurrency point of scaling.py's figure. The prepare stage is cached under
`<storage>/prepared` (the first run prepares Original and Retrain, about 5 min, and is not timed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import harness

from raysimnpo import results
from raysimnpo.config.sweep import load_sweep_config

NAME = "sweep_overhead"
TARGET_COMPUTE_SHARE = 0.80
TOLERANCE = 1e-5
VARIANTS: dict[str, list[str]] = {
    "before": ["run.evaluation.engine=ray_data", "search.max_concurrent_trials=1"],
    "after": ["run.evaluation.engine=auto", "search.max_concurrent_trials=1"],
    "after2": ["run.evaluation.engine=auto", "search.max_concurrent_trials=2"],
}
COMPUTE = ("unlearn", "evaluate")
CHECKPOINT_IO = ("load_original", "save_checkpoint", "load_checkpoint")
RAY_STARTUP = ("eval_startup", "trainer_startup")
DATA = ("workspace",)


def run_variant(
    variant: str, trials: int, storage: Path, extra: list[str], name: str | None = None
) -> dict[str, Any]:
    from raysimnpo.orchestration.tuner import run_sweep

    name = name or f"overhead-{variant}"
    overrides = [
        f"name={name}",
        f"storage={storage}",
        f"search.num_trials={trials}",
        "search.sampler=random",
        *extra,
        *VARIANTS[variant],
    ]
    sweep = load_sweep_config("tofu", overrides)
    run_dir = storage / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    load_before = harness.machine()["load_average"]
    started_at = time.time()
    wall, _ = harness.timed(
        lambda: run_sweep(sweep, run_dir, resume=False, log=lambda m: print(f"  {variant}: {m}", flush=True))
    )
    root = results.results_root(str(storage), name)
    trial_rows = [t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"]
    metric_rows = results.read_table(root, "metrics").to_pylist()
    per_trial: list[dict[str, Any]] = []
    for t in sorted(trial_rows, key=lambda t: t["started_at"]):
        mine = [m for m in metric_rows if m["trial_id"] == t["trial_id"]]
        phases = {m["metric"].removesuffix("_seconds"): m["value"] for m in mine if m["stage"] == "timing"}
        final = {m["metric"]: m["value"] for m in mine if m["stage"] == "final"}
        per_trial.append(
            {
                "trial_id": t["trial_id"],
                "method": t["method"],
                "params_json": t["params_json"],
                "status": t["status"],
                "start": t["started_at"].timestamp() - started_at,
                "end": t["finished_at"].timestamp() - started_at,
                "function_seconds": t["total_seconds"],
                "phases": phases,
                "metrics": final,
            }
        )
    return {
        "variant": variant,
        "overrides": overrides,
        "wall_seconds": wall,
        "load_average_before": load_before,
        "load_average_after": harness.machine()["load_average"],
        "trials": per_trial,
    }


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Seconds per bucket summed over trials, and the sweep's wall outside the trial functions."""
    trials = run["trials"]
    sums: dict[str, float] = {}
    for t in trials:
        for phase, seconds in t["phases"].items():
            sums[phase] = sums.get(phase, 0.0) + seconds
    function = sum(t["function_seconds"] for t in trials)
    accounted = sum(sums.values())
    first_start = min(t["start"] for t in trials)
    last_end = max(t["end"] for t in trials)
    out = {
        "training compute (unlearn loop)": sums.get("unlearn", 0.0),
        "evaluation compute (scoring + generation)": sums.get("evaluate", 0.0),
        "data loading / tokenizing (workspace)": sum(sums.get(p, 0.0) for p in DATA),
        "checkpoint I/O (load Original, save, reload)": sum(sums.get(p, 0.0) for p in CHECKPOINT_IO),
        "Ray start-up in trials (eval actor / TorchTrainer)": sum(sums.get(p, 0.0) for p in RAY_STARTUP),
        "metric aggregation": sums.get("metrics", 0.0),
        "rest of the trial function": function - accounted,
    }
    out["trial functions, total"] = function
    out["sweep start: prepare stage (cached), Tune start, first trial start"] = first_start
    # With one trial at a time, the time between trials is Tune's: result writing, reporting,
    # the searcher, starting the next trial. With more, trials overlap: this is the wall not covered.
    out["between and after trials (writing results, Tune, waiting)"] = (
        run["wall_seconds"] - first_start - covered_seconds(trials)
    ) + 0.0
    out["sweep wall (run_sweep)"] = run["wall_seconds"]
    out["trials' first start to last end"] = last_end - first_start
    return out


def covered_seconds(trials: list[dict[str, Any]]) -> float:
    """Seconds of the sweep's wall during which at least one trial function was running."""
    spans = sorted((t["start"], t["end"]) for t in trials)
    covered, current_start, current_end = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > current_end:
            covered += current_end - current_start
            current_start, current_end = s, e
        else:
            current_end = max(current_end, e)
    return covered + current_end - current_start


def shares(run: dict[str, Any]) -> dict[str, float]:
    b = breakdown(run)
    compute = b["training compute (unlearn loop)"] + b["evaluation compute (scoring + generation)"]
    trials = run["trials"]
    concurrency = max(1, int(round(b["trial functions, total"] / max(covered_seconds(trials), 1e-9))))
    per_trial_walls = trial_walls(run)
    return {
        "compute_seconds": compute,
        # Per trial: its compute over its function time plus the Tune time until the next trial starts.
        "compute_share_of_trial_wall": compute / sum(per_trial_walls),
        "compute_share_of_trial_function": compute / b["trial functions, total"],
        # Whole sweep (prepare stage cached, Ray already started): compute over wall x concurrency.
        "compute_share_of_sweep_wall": compute / (b["sweep wall (run_sweep)"] * concurrency),
        "trials_per_minute": len(trials) / b["sweep wall (run_sweep)"] * 60,
        "steady_trials_per_minute": (len(trials) - 1)
        / max(1e-9, trials[-1]["start"] - trials[0]["start"])
        * 60
        if len(trials) > 1
        else float("nan"),
    }


def trial_walls(run: dict[str, Any]) -> list[float]:
    """Each trial's wall: from its function's start to the next trial's start (to the sweep's end
    for the last), minus overlap with other trials when several run at once (then: function time)."""
    trials = sorted(run["trials"], key=lambda t: t["start"])
    walls = []
    for i, t in enumerate(trials):
        nxt = trials[i + 1]["start"] if i + 1 < len(trials) else run["wall_seconds"]
        walls.append(max(t["end"], nxt) - t["start"] if nxt >= t["end"] else t["function_seconds"])
    return walls


def compare_metrics(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Trials with the same hyperparameters (random sampler, same seed: the same set of trials,
    in an order that concurrency may change) must give the same metrics."""
    diffs: list[float] = []
    by_params = {t["params_json"]: t for t in b["trials"]}
    matched = 0
    for ta in a["trials"]:
        tb = by_params.get(ta["params_json"])
        if tb is None:
            continue
        matched += 1
        for key, value in ta["metrics"].items():
            if key in tb["metrics"]:
                diffs.append(abs(value - tb["metrics"][key]))
    return {
        "trials_matched": matched,
        "max_abs_diff": max(diffs) if diffs else float("nan"),
        "values_compared": len(diffs),
    }


def base_variant(label: str) -> str:
    return label.split("_")[0]


def pooled(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, every repeat's trials together: medians per trial and shares of the summed time."""
    out: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(base_variant(r["label"]) for r in runs):
        mine = [r for r in runs if base_variant(r["label"]) == variant]
        trials = [t for r in mine for t in r["trials"]]
        walls = [w for r in mine for w in trial_walls(r)]
        compute = sum(t["phases"].get(p, 0.0) for t in trials for p in COMPUTE)
        row: dict[str, float] = {"trials": float(len(trials))}
        row["trial wall s (median)"] = harness.median(walls)
        for phase in PHASES:
            row[f"{phase} s (median)"] = harness.median([t["phases"].get(phase, 0.0) for t in trials])
        for name, phases in (
            ("Ray start-up", RAY_STARTUP),
            ("checkpoint I/O", CHECKPOINT_IO),
            ("data loading", DATA),
        ):
            row[f"{name} share of trial wall"] = sum(
                t["phases"].get(p, 0.0) for t in trials for p in phases
            ) / sum(walls)
        row["compute share of trial wall"] = compute / sum(walls)
        row["compute share of sweep wall x concurrency"] = compute / sum(
            r["wall_seconds"]
            * max(1, int(round(r["breakdown"]["trial functions, total"] / covered_seconds(r["trials"]))))
            for r in mine
        )
        row["sweep start s (median)"] = harness.median(
            [
                r["breakdown"]["sweep start: prepare stage (cached), Tune start, first trial start"]
                for r in mine
            ]
        )
        row["steady trials/min (median)"] = harness.median(
            [r["shares"]["steady_trials_per_minute"] for r in mine]
        )
        out[variant] = row
    return out


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print every table; return the metric agreement and the pooled summary."""
    labels = [r["label"] for r in runs]
    rows = [[bucket, *[r["breakdown"][bucket] for r in runs]] for bucket in runs[0]["breakdown"]]
    print(harness.markdown_table(["seconds (sum over trials)", *labels], rows))
    share_rows = [[key, *[r["shares"][key] for r in runs]] for key in runs[0]["shares"]]
    print(harness.markdown_table(["", *labels], share_rows))
    phase_rows = [
        [
            r["label"],
            t["method"],
            t["start"],
            t["function_seconds"],
            *[t["phases"].get(p, 0.0) for p in PHASES],
        ]
        for r in runs
        for t in r["trials"]
    ]
    print(harness.markdown_table(["run", "method", "start s", "function s", *PHASES], phase_rows))
    summary = pooled(runs)
    variants = list(summary)
    print(
        harness.markdown_table(
            ["pooled over repeats", *variants],
            [[key, *[summary[v][key] for v in variants]] for key in summary[variants[0]]],
        )
    )
    agreement = {}
    by_label = {r["label"]: r for r in runs}
    for other in by_label:
        if other != "before" and "before" in by_label:
            agreement[other] = compare_metrics(by_label["before"], by_label[other])
            print(f"before vs {other} metrics: {agreement[other]}")
    return {"metric_agreement_with_before": agreement, "pooled": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument(
        "--order", default="before,after", help="variants in run order (before, after, after2)"
    )
    parser.add_argument("--storage", default="/tmp/raysimnpo-sweep-overhead")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--summarize", action="store_true", help="only re-print the tables of the last result file"
    )
    args = parser.parse_args()
    if args.summarize:
        path = harness.RESULTS_DIR / f"{NAME}.json"
        payload = json.loads(path.read_text())
        payload.update(report(payload["runs"]))
        payload.pop("metric_agreement_before_after", None)
        harness.write_result(NAME, payload)
        return
    storage = Path(args.storage)
    storage.mkdir(parents=True, exist_ok=True)
    machine = harness.machine()
    ray_init_seconds = harness.start_ray(args.num_cpus, object_store_mib=512)
    print(f"ray.init: {ray_init_seconds:.1f} s")

    # Prepare (or find cached) Original, Retrain and reference NLLs once, untimed.
    from raysimnpo.orchestration.prepare import prepare_stage

    warm = load_sweep_config("tofu", ["name=overhead-prepare", f"storage={storage}", *args.overrides])
    (storage / "overhead-prepare").mkdir(exist_ok=True)
    prepare_stage(warm, storage / "overhead-prepare", lambda m: print(f"  prepare: {m}", flush=True))

    if args.warmup:
        # Untimed: the first sweep of a Ray session starts its worker processes (torch imports);
        # every measured variant then finds them started, whatever the order.
        print("[warm-up] 1 trial, not measured", flush=True)
        run_variant("after", 1, storage, args.overrides, name="overhead-warmup")

    runs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for variant in args.order.split(","):
        seen[variant] = seen.get(variant, 0) + 1
        label = variant if seen[variant] == 1 else f"{variant}_{seen[variant]}"
        print(f"[{label}] {args.trials} trials", flush=True)
        run = run_variant(variant, args.trials, storage, args.overrides, name=f"overhead-{label}")
        run["label"] = label
        run["breakdown"] = breakdown(run)
        run["shares"] = shares(run)
        runs.append(run)
        print(f"[{label}] wall {run['wall_seconds']:.1f} s, shares {run['shares']}", flush=True)

    summary = report(runs)
    path = harness.write_result(
        NAME,
        {
            "machine": machine,
            "load_average_end": harness.machine()["load_average"],
            "ray_init_seconds": ray_init_seconds,
            "trials": args.trials,
            "overrides": args.overrides,
            "target_compute_share": TARGET_COMPUTE_SHARE,
            **summary,
            "runs": runs,
        },
    )
    print(f"wrote {path}")
    print(json.dumps({r["label"]: r["shares"] for r in runs}, indent=1))


PHASES = (
    "workspace",
    "load_original",
    "unlearn",
    "save_checkpoint",
    "eval_startup",
    "load_checkpoint",
    "evaluate",
    "metrics",
)


if __name__ == "__main__":
    main()
