"""Invariance: the same trial config and seed unlearned by (a) one process, (b) one TorchTrainer
worker and (c) two FSDP2 TorchTrainer workers (gloo, CPU, tiny model), for SimNPO, NPO, GradDiff-KL
and RMU (`raysimnpo.orchestration.invariance`, the code of the CI test
tests/orchestration/test_invariance.py).

Prints, per method and run, the largest difference to the single process: per-epoch losses
(relative), final weights (absolute), forget quality, model utility with its 9 parts and the
per-example forget truth ratios (relative), and whether the global batches are the same; writes
perf/results/invariance.json.

    .venv/bin/python perf/invariance.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import harness

from raysimnpo.orchestration import invariance

NAME = "invariance"
COLUMNS = ("losses", "weights", "forget_quality", "model_utility", "truth_ratios")


def main() -> None:
    harness.set_threads(1)
    ray_seconds = harness.start_ray()
    methods = list(invariance.METHOD_PARAMS)
    with tempfile.TemporaryDirectory(prefix="raysimnpo-invariance-") as scratch:
        config, original, reference = invariance.prepare_case(Path(scratch))
        seconds = {}
        started = time.perf_counter()
        runs = {
            "single_process": invariance.run_methods(
                config.model_dump_json(), str(original), reference, methods
            )
        }
        seconds["single_process"] = time.perf_counter() - started
        for name, workers in (("one_worker", 1), ("two_workers", 2)):
            started = time.perf_counter()
            runs[name] = invariance.run_on_workers(config, original, reference, methods, workers)
            seconds[name] = time.perf_counter() - started
    rows, table = [], []
    for method in methods:
        for run in invariance.RUNS:
            diff = invariance.compare(runs["single_process"][method], runs[run][method])
            rows.append({"method": method, "run": run, **diff})
            table.append([method, run, "yes" if diff["same_batches"] else "NO", *(diff[c] for c in COLUMNS)])
    print(
        harness.markdown_table(
            ["method", "run", "same batches", *(f"max Δ {c}" for c in COLUMNS)],
            table,
        )
    )
    print(f"\nwall seconds per run (4 methods, evaluation included): {seconds}; ray.init {ray_seconds:.1f} s")
    path = harness.write_result(
        NAME,
        {
            "machine": harness.machine(),
            "config": config.model_dump(mode="json"),
            "methods": {m: p.model_dump() for m, p in invariance.METHOD_PARAMS.items()},
            "seconds": seconds,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
