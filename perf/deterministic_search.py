"""What `search.deterministic` costs in wall time, and that it reproduces a sweep.

1. Replay. The trial durations of finished sweeps (`--runs`: run folders, e.g. the per-epoch sweeps
   of `search_efficiency.py`) are drawn, with replacement and seeded, into sequences of trials, and
   each sequence is scheduled on k slots under four rules:
   - `free`: a trial starts as soon as a slot frees (`search.deterministic: false`);
   - `L = k` / `L = 2k - 1`: trial i also waits until trial i - L has ended, the rule a deterministic
     search needs so that suggestion i sees exactly trials 0..i-L (`search.SweepSearch`; the sweep
     uses L = 2k - 1, `search.deterministic_lag`);
   - `batch`: k trials at a time, the next k when all have ended (Tune's `ConcurrencyLimiter(batch=True)`).
   Reported: the mean time to finish the sequence, and its ratio to `free`.
2. Reruns (`--storage`). The default sweep (`sweeps/tofu.yaml`, 10 trials, 2 at a time, relearning
   off) runs twice with `search.deterministic=true` and once without; the two deterministic studies
   are compared trial by trial (settings, values, state) and the minutes of trials are reported.

    .venv/bin/python perf/deterministic_search.py --runs /tmp/perf-search/per-epoch-seed*/tofu [--storage /tmp/perf-det]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import polars as pl  # noqa: E402

from raysimnpo.analysis.load import load_runs  # noqa: E402
from raysimnpo.orchestration.search import deterministic_lag  # noqa: E402

SLOTS = 2  # the default sweep's trials at a time on 2 cores


def trial_seconds(run_dirs: list[str]) -> list[float]:
    """Wall seconds of every whole trial (not its epoch candidates) of the run folders."""
    trials = load_runs(run_dirs).trials.filter(
        (pl.col("kind") == "trial") & ~pl.col("trial_id").str.contains(r"\.epoch-")
    )
    return [(r["finished_at"] - r["started_at"]).total_seconds() for r in trials.to_dicts()]


def finish_time(durations: list[float], slots: int, lag: int | None) -> float:
    """When the last of `durations` (in suggestion order) ends on `slots` slots, trial i starting
    when a slot is free and, with `lag`, trial i - lag has ended."""
    free_at, end = [0.0] * slots, []
    for i, seconds in enumerate(durations):
        slot = min(range(slots), key=free_at.__getitem__)
        start = free_at[slot] if lag is None or i < lag else max(free_at[slot], end[i - lag])
        end.append(start + seconds)
        free_at[slot] = end[-1]
    return max(end)


def batched_time(durations: list[float], slots: int) -> float:
    return sum(max(durations[b : b + slots]) for b in range(0, len(durations), slots))


def replay(durations: list[float], slots: int, trials: int, draws: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    totals = {"free": 0.0, "L = k": 0.0, "L = 2k - 1": 0.0, "batch": 0.0}
    for _ in range(draws):
        sequence = [rng.choice(durations) for _ in range(trials)]
        totals["free"] += finish_time(sequence, slots, None)
        totals["L = k"] += finish_time(sequence, slots, slots)
        totals["L = 2k - 1"] += finish_time(sequence, slots, deterministic_lag(slots))
        totals["batch"] += batched_time(sequence, slots)
    return {rule: total / draws for rule, total in totals.items()}


def study_rows(study_file: Path, name: str) -> list[tuple[Any, ...]]:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{study_file}")
    return [
        (t.params, t.values, t.state.name, t.user_attrs.get("epoch"))
        for t in optuna.load_study(study_name=name, storage=storage).trials
    ]


def rerun(storage: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, deterministic in (("deterministic-1", True), ("deterministic-2", True), ("free", False)):
        where = storage / label
        if not (where / "tofu" / "results" / "trials").exists():
            command = ["raysimnpo.sweep", "tofu", "--storage", str(where), "--set", "relearn=null"]
            command += ["--set", f"search.deterministic={str(deterministic).lower()}"]
            harness.run_cli(command, f"{label}: the sweep")
        trials = load_runs([str(where / "tofu")]).trials.filter(pl.col("kind") == "trial")
        minutes = (trials["finished_at"].max() - trials["started_at"].min()).total_seconds() / 60  # type: ignore[operator]
        busy = sum(trial_seconds([str(where / "tofu")])) / 60
        out[label] = {
            "minutes_of_trials": minutes,
            "trial_minutes": busy,  # the trials' own wall minutes, summed
            "slots_busy": busy / (SLOTS * minutes),  # the share of the slots' time a trial ran
            "study": study_rows(where / "tofu" / "optuna.sqlite", "tofu"),
        }
    first, second = out["deterministic-1"]["study"], out["deterministic-2"]["study"]
    out["same_study"] = first == second
    out["study_trials"] = len(first)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", nargs="+", required=True, help="finished sweep run folders (their trial durations)"
    )
    parser.add_argument("--storage", type=Path, help="run the default sweep 3 times here (2 deterministic)")
    parser.add_argument("--trials", type=int, default=40, help="trials per replayed sequence")
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    durations = trial_seconds(args.runs)
    print(
        f"{len(durations)} trials, mean {sum(durations) / len(durations):.1f} s, {min(durations):.1f}-{max(durations):.1f} s"
    )
    replays = {k: replay(durations, k, args.trials, args.draws, seed=k) for k in (2, 4, 8)}
    rows = [
        [k, rule, f"{seconds / 60:.2f}", f"{seconds / replays[k]['free']:.3f}"]
        for k, by_rule in replays.items()
        for rule, seconds in by_rule.items()
    ]
    print(f"Replay: {args.draws} sequences of {args.trials} trials")
    print(harness.markdown_table(["k (trials at a time)", "rule", "minutes (mean)", "/ free"], rows))
    payload: dict[str, Any] = {
        "machine": harness.machine(),
        "runs": args.runs,
        "trial_seconds": durations,
        "trials_per_sequence": args.trials,
        "draws": args.draws,
        "replay_seconds": {str(k): v for k, v in replays.items()},
    }
    if args.storage is not None:
        reruns = rerun(args.storage)
        labels = ("deterministic-1", "deterministic-2", "free")
        print("Reruns of the default sweep (10 trials, 2 at a time):")
        rows = [
            [
                k,
                f"{reruns[k]['minutes_of_trials']:.2f}",
                f"{reruns[k]['trial_minutes']:.2f}",
                f"{reruns[k]['slots_busy']:.3f}",
            ]
            for k in labels
        ]
        print(
            harness.markdown_table(["run", "minutes of trials", "trial minutes (summed)", "slots busy"], rows)
        )
        verdict = "identical" if reruns["same_study"] else "DIFFERENT"
        print(f"The two deterministic studies ({reruns['study_trials']} trials with epoch points): {verdict}")
        payload["reruns"] = {
            k: {key: v for key, v in reruns[k].items() if key != "study"} for k in labels
        } | {
            "same_study": reruns["same_study"],
            "study_trials": reruns["study_trials"],
        }
    print(f"saved {harness.write_result('deterministic_search', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
