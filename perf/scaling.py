"""Scaling: unlearning and evaluation time vs forget-set size, and vs concurrent trials (issue 8, item 5).

1. Forget-set size: the default run (sweeps/tofu.yaml: generated TOFU, `tiny`, SimNPO, unlearning
   batch 16 for `--epochs` epochs, evaluation batch 64) on forget01 / forget05 / forget10 — the TOFU
   proportions, 1 / 5 / 10% of the authors — starting from the same Original (it is trained on the
   full set, so it does not depend on the split). Measured in this process, `--threads` torch
   threads: the unlearning loop (`TrainingSummary.seconds`) and the full evaluation
   (`recipes.evaluate.evaluate`: forget, retain, real authors, world facts). Rounds rotate the split order.
   The fitted line: seconds = intercept + slope x forget examples (least squares over every round),
   for wall seconds and for the process's CPU seconds — the latter barely moves with other users'
   load on a shared machine, so its fit is the one to read there.
2. Concurrent trials: the same trial body (forget10: load the Original, unlearn, evaluate) as Ray
   tasks of 1 CPU and 1 thread each, 2 trials run one after the other vs both at once, alternating.
   Per-trial unlearn and evaluation seconds (wall and CPU), and the makespan of the 2 trials. This box has 2 cores
   (shared with other users), so 2 is the most concurrent trials a default sweep runs here
   (`max_concurrent_trials` = CPUs // cpus_per_worker).

Writes perf/results/scaling.json and perf/results/scaling.png (needs the Original that
`sweep_overhead.py` prepares under `--storage`).

    .venv/bin/python perf/scaling.py [--rounds 2] [--epochs 5] [--storage /tmp/raysimnpo-sweep-overhead]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

from raysimnpo.config.run import RunSettings
from raysimnpo.config.sweep import load_sweep_config
from raysimnpo.recipes.evaluate import evaluate
from raysimnpo.recipes.prepare import prepared_dirs
from raysimnpo.recipes.unlearn import unlearn_model
from raysimnpo.recipes.workspace import workspace

NAME = "scaling"
SPLITS = ("forget01", "forget05", "forget10")
PHASES = ("unlearn", "evaluate", "unlearn_cpu", "evaluate_cpu")


def split_config(base: RunSettings, split: str, epochs: int) -> RunSettings:
    return base.model_copy(
        update={
            "data": base.data.model_copy(update={"forget_split": split}),
            "unlearn": base.unlearn.model_copy(update={"epochs": epochs}),
        }
    )


def trial_body(run_json: str, original: str, threads: int) -> dict[str, float]:
    """Load the Original, unlearn with the run's method, evaluate: the compute of one sweep trial.
    Wall seconds and this process's CPU seconds (all threads) of each phase."""
    import torch

    torch.set_num_threads(threads)
    run = RunSettings.model_validate_json(run_json)
    ws = workspace(run)
    started, cpu_started = time.perf_counter(), time.process_time()
    model, summary = unlearn_model(ws, Path(original))
    evaluated, cpu_evaluated = time.perf_counter(), time.process_time()
    evaluate(ws, model, None)
    ended, cpu_ended = time.perf_counter(), time.process_time()
    # (no `harness` here: a Ray task pickles this function by value and cannot import perf/)
    return {
        "unlearn": summary.seconds,
        "evaluate": ended - evaluated,
        "trial": ended - started,
        "unlearn_cpu": cpu_evaluated - cpu_started,  # includes loading the Original (~0.2 s)
        "evaluate_cpu": cpu_ended - cpu_evaluated,
        "forget": len(ws.data.forget),
    }


def fit_line(x: list[float], y: list[float]) -> dict[str, float]:
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    predicted = intercept + slope * np.asarray(x, float)
    residual = float(np.sum((np.asarray(y) - predicted) ** 2))
    total = float(np.sum((np.asarray(y) - np.mean(y)) ** 2))
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": 1 - residual / total if total else 1.0,
    }


def forget_size_scaling(
    base: RunSettings, original: Path, rounds: int, epochs: int, threads: int
) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    for r in range(rounds):
        order = SPLITS[r % 3 :] + SPLITS[: r % 3]
        for split in order:
            out = trial_body(split_config(base, split, epochs).model_dump_json(), str(original), threads)
            samples.append({"split": split, "round": r, **out})
            print(f"round {r + 1} {split}: {out}", flush=True)
    fits = {phase: fit_line([s["forget"] for s in samples], [s[phase] for s in samples]) for phase in PHASES}
    table = {
        split: {
            "forget": next(s["forget"] for s in samples if s["split"] == split),
            **{phase: harness.median([s[phase] for s in samples if s["split"] == split]) for phase in PHASES},
        }
        for split in SPLITS
    }
    return {"samples": samples, "fits": fits, "table": table}


def concurrency_scaling(base: RunSettings, original: Path, rounds: int, epochs: int) -> dict[str, Any]:
    import ray

    harness.start_ray()
    task = ray.remote(num_cpus=1)(trial_body)
    run_json = split_config(base, "forget10", epochs).model_dump_json()
    ray.get([task.remote(run_json, str(original), 1) for _ in range(2)])  # start and warm both workers
    samples: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    makespans: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for concurrent in (1, 2) if r % 2 == 0 else (2, 1):
            started = time.perf_counter()
            if concurrent == 1:
                outs = [ray.get(task.remote(run_json, str(original), 1)) for _ in range(2)]
            else:
                outs = ray.get([task.remote(run_json, str(original), 1) for _ in range(2)])
            makespans[concurrent].append(time.perf_counter() - started)
            samples[concurrent] += outs
            print(
                f"round {r + 1}, {concurrent} at once: {makespans[concurrent][-1]:.1f} s {outs}", flush=True
            )
    ray.shutdown()
    summary = {
        c: {
            **{phase: harness.median([s[phase] for s in samples[c]]) for phase in (*PHASES, "trial")},
            "makespan_2_trials": harness.median(makespans[c]),
            "trials_per_minute": 2 / harness.median(makespans[c]) * 60,
        }
        for c in (1, 2)
    }
    return {"samples": samples, "makespans": makespans, "summary": summary}


def plot(size: dict[str, Any], concurrency: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = np.array([size["table"][s]["forget"] for s in SPLITS], float)
    line = np.linspace(0, xs.max() * 1.05, 20)
    for phase, colour in (("unlearn_cpu", "tab:blue"), ("evaluate_cpu", "tab:orange")):
        pts = size["samples"]
        wall = phase.removesuffix("_cpu")
        left.scatter([p["forget"] for p in pts], [p[phase] for p in pts], color=colour, s=14)
        left.scatter(
            [p["forget"] for p in pts], [p[wall] for p in pts], color=colour, s=14, marker="x", alpha=0.5
        )
        fit = size["fits"][phase]
        left.plot(
            line,
            fit["intercept"] + fit["slope"] * line,
            color=colour,
            label=f"{phase}: {fit['intercept']:.2f} s + {fit['slope'] * 100:.2f} s/100 ex (R² {fit['r2']:.3f})",
        )
    for x, s in zip(xs, SPLITS, strict=True):
        left.annotate(s, (x, 0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    left.set_xlabel("forget examples")
    left.set_ylabel("CPU seconds (dots, fitted), wall (x), 1 thread")
    left.set_title("time vs forget-set size")
    left.legend(fontsize=7)
    summary = concurrency["summary"]
    conc = [1, 2]
    width = 0.25
    for i, (key, label) in enumerate(
        (
            ("unlearn", "unlearn / trial"),
            ("evaluate", "evaluate / trial"),
            ("makespan_2_trials", "2 trials, wall"),
        )
    ):
        right.bar(np.array(conc) + (i - 1) * width, [summary[c][key] for c in conc], width, label=label)
    right.set_xticks(conc, ["1 at a time", "2 at once"])
    right.set_ylabel("seconds")
    right.set_title("concurrent trials (2-core box)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storage", default="/tmp/raysimnpo-sweep-overhead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    harness.set_threads(args.threads)
    machine = harness.machine()
    base = load_sweep_config("tofu", [f"storage={args.storage}", *args.overrides]).run
    original, _ = prepared_dirs(base, Path(args.storage) / "prepared")
    original = original / "model"
    if not (original / "config.json").is_file():
        raise SystemExit(f"no prepared Original at {original}; run perf/sweep_overhead.py first")

    size = forget_size_scaling(base, original, args.rounds, args.epochs, args.threads)
    rows = [[s, t["forget"], *[t[p] for p in PHASES]] for s, t in size["table"].items()]
    print(harness.markdown_table(["split", "forget examples", *[f"{p} s" for p in PHASES]], rows))
    for phase, fit in size["fits"].items():
        print(f"{phase}: {fit['intercept']:.3f} s + {fit['slope']:.4f} s/example (R² {fit['r2']:.4f})")
    load_mid = harness.machine()["load_average"]
    concurrency = concurrency_scaling(base, original, args.rounds, args.epochs)
    keys = [*PHASES, "trial", "makespan_2_trials", "trials_per_minute"]
    rows = [[c, *[s[k] for k in keys]] for c, s in concurrency["summary"].items()]
    print(harness.markdown_table(["concurrent", *keys], rows))
    png = harness.RESULTS_DIR / f"{NAME}.png"
    plot(size, concurrency, png)
    path = harness.write_result(
        NAME,
        {
            "machine": machine,
            "load_average_mid": load_mid,
            "load_average_end": harness.machine()["load_average"],
            "epochs": args.epochs,
            "threads": args.threads,
            "forget_size": size,
            "concurrency": concurrency,
            "plot": str(png.name),
        },
    )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
