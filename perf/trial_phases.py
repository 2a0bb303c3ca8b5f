"""Per-trial phase seconds of finished sweeps, from their `metrics` tables (stage "timing" rows).

    .venv/bin/python perf/trial_phases.py --storage runs before=tofu after=tofu-after

Compares sweeps of the same settings run by two versions of the code (e.g. before and after a
change), trial by trial: trials are matched by their method and hyperparameters (the same seed gives
the same Optuna suggestions), so the table also shows whether their forget quality and model utility
are identical. Prints a Markdown table and writes `perf/results/trial_phases.json`.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import harness

from raysimnpo import results


def trial_phases(storage: str, sweep: str) -> dict[str, dict[str, Any]]:
    """trial params_json -> {trial_id, method, FQ, MU, <phase>_seconds...} of one sweep's trials."""
    root = results.results_root(storage, sweep)
    trials = {
        t["trial_id"]: t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"
    }
    out: dict[str, dict[str, Any]] = {
        t["params_json"]: {"trial_id": tid, "method": t["method"], "total_seconds": t["total_seconds"]}
        for tid, t in trials.items()
    }
    for row in results.read_table(root, "metrics").to_pylist():
        trial = trials.get(row["trial_id"])
        if trial is None:
            continue
        if (
            row["stage"] == "timing"
            or row["stage"] == "final"
            and row["metric"] in ("forget_quality", "model_utility")
        ):
            out[trial["params_json"]][row["metric"]] = row["value"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True)
    parser.add_argument("sweeps", nargs="+", metavar="LABEL=SWEEP")
    parser.add_argument(
        "--note", default="", help="how the sweeps were run (command, settings, code versions)"
    )
    args = parser.parse_args()
    labelled = dict(item.split("=", 1) for item in args.sweeps)
    runs = {label: trial_phases(args.storage, sweep) for label, sweep in labelled.items()}
    first = next(iter(runs.values()))
    labels = list(runs)
    rows = []
    for params, trial in first.items():
        same = [runs[label].get(params) for label in labels]
        if any(t is None for t in same):
            continue
        identical = all(
            (t.get("forget_quality"), t.get("model_utility"))
            == (trial.get("forget_quality"), trial.get("model_utility"))
            for t in same
        )
        rows.append(
            [trial["method"], *(f"{t.get('workspace_seconds', float('nan')):.3f}" for t in same), identical]
        )
    print(
        harness.markdown_table(
            ["method", *(f"workspace s ({label})" for label in labels), "same FQ, MU"], rows
        )
    )
    means = {
        label: statistics.mean(t.get("workspace_seconds", float("nan")) for t in run.values())
        for label, run in runs.items()
    }
    print("mean workspace seconds per trial: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    path = harness.write_result(
        "trial_phases",
        {
            "machine": harness.machine(),
            "storage": args.storage,
            "note": args.note,
            "sweeps": labelled,
            "trials": {label: list(run.values()) for label, run in runs.items()},
            "mean_workspace_seconds": means,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
