"""`python -m raysimnpo.sweep markov`: the paper's Markov-chain study (§5, appendix B, Fig. 6) on Ray.

For every experiment of the `markov:` section the Original and Retrain models are pretrained once
(Ray tasks; cached by content hash under `<storage>/prepared/markov-<role>-<hash>/`, so an experiment
sharing retain data shares Retrain, and a rerun or a new β grid retrains nothing). Then every
(experiment, method, β) of the grid (the experiment's own β plus `beta_grid`) unlearns its Original
in a Ray task, which starts as soon as that Original is ready. Output, under `<storage>/<name>/`:

    results/trajectories.parquet   one row per evaluation: experiment, method, beta, iteration,
                                   forget1_kl, forget2_kl, retain_kl (+ schema_version); the Original
                                   and Retrain of each experiment as rows with method original/retrain
                                   and no beta/iteration
    report/fig6.png                per experiment, forget KL (Forget1, Forget2) vs retain KL along the
                                   unlearning path of NPO and SimNPO at the paper's β, Retrain marked
    config.json                    the resolved sweep file

and a summary table on stdout. `--resume` changes nothing here: prepared models are always reused
and the grid (minutes on 2 cores) always reruns; results files are replaced atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from ..benchmarks import markov as mk
from ..errors import UserInputError
from ..maths.metrics.markov import first_reaching
from ..orchestration.cluster import check_storage, start_ray
from ..results import write_parquet

Log = Callable[[str], None]
Row = dict[str, Any]

RESULTS_FILE = Path("results") / "trajectories.parquet"
FIGURE_FILE = Path("report") / "fig6.png"
SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("method", pa.string()),
        ("beta", pa.float64()),
        ("iteration", pa.int64()),
        ("forget1_kl", pa.float64()),
        ("forget2_kl", pa.float64()),
        ("retain_kl", pa.float64()),
        ("schema_version", pa.int32()),
    ]
)
METHOD_ORDER = {"original": 0, "retrain": 1, **{m: 2 + i for i, m in enumerate(mk.FIG6_METHODS)}}
LABELS = {"npo": "NPO", "simnpo": "SimNPO"}
COLORS = {"npo": "tab:blue", "simnpo": "tab:orange"}


# --------------------------------------------------------------------------------------------
# Ray tasks (each sets its torch threads to its CPUs: two spinning threads per core thrash)
# --------------------------------------------------------------------------------------------


def _task_setup(config_json: str, threads: int) -> mk.MarkovConfig:
    import torch

    torch.set_num_threads(threads)
    return mk.MarkovConfig.model_validate_json(config_json)


@ray.remote
def _prepare_task(config_json: str, experiment: str, role: mk.Role, root: str, threads: int) -> str:
    config = _task_setup(config_json, threads)
    log = lambda message: print(message, flush=True)  # noqa: E731
    return str(mk.prepare_model(config, config.experiments[experiment], role, Path(root), log))


@ray.remote
def _reference_task(config_json: str, experiment: str, role: mk.Role, path: str, threads: int) -> Row:
    config = _task_setup(config_json, threads)
    return mk.reference_row(config, experiment, role, path)


@ray.remote
def _unlearn_task(
    config_json: str, experiment: str, method: str, beta: float, original: str, threads: int
) -> tuple[list[Row], float]:
    config = _task_setup(config_json, threads)
    started = time.perf_counter()
    rows = mk.unlearn_trajectory(config, experiment, method, beta, original)
    return rows, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def run_markov(sweep: mk.MarkovSweep, run_dir: Path, log: Log) -> list[Row]:
    """Prepare, unlearn the whole grid, write the Parquet file and the figure; returns all rows."""
    config = sweep.markov
    config_json = config.model_dump_json()
    resources = sweep.resources
    threads = max(1, int(resources.cpus_per_task))
    options = {"num_cpus": resources.cpus_per_task, "num_gpus": resources.gpus_per_task}
    root = run_dir.parent / "prepared"
    started = time.monotonic()

    # One task per distinct prepared model (experiments with the same retain data share Retrain).
    prepared: dict[str, ray.ObjectRef] = {}
    model_refs: dict[tuple[str, str], ray.ObjectRef] = {}
    for name, experiment in config.experiments.items():
        for role in ("original", "retrain"):
            key = str(mk.model_dir(root, config, experiment, role))
            if key not in prepared:
                prepared[key] = _prepare_task.options(**options).remote(
                    config_json, name, role, str(root), threads
                )
            model_refs[name, role] = prepared[key]
    log(f"[markov] preparing {len(prepared)} models under {root}")

    references = [
        _reference_task.options(**options).remote(config_json, name, role, model_refs[name, role], threads)
        for name in config.experiments
        for role in ("original", "retrain")
    ]
    grid = config.grid()
    pending = {
        _unlearn_task.options(**options).remote(config_json, e, m, b, model_refs[e, "original"], threads): (
            e,
            m,
            b,
        )
        for e, m, b in grid
    }
    log(f"[markov] {len(grid)} unlearning runs: {', '.join(f'{e}/{m}/β={b:g}' for e, m, b in grid)}")

    rows: list[Row] = list(ray.get(references))
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        exp_name, method, beta = pending.pop(ready[0])
        trajectory, seconds = ray.get(ready[0])
        rows.extend(trajectory)
        done += 1
        last = trajectory[-1]
        log(
            f"[markov] {done}/{len(grid)} {exp_name} {LABELS[method]} β={beta:g}: it {last['iteration']} "
            f"F1 {last['forget1_kl']:.3f} F2 {last['forget2_kl']:.3f} retain {last['retain_kl']:.4f} "
            f"({seconds:.0f} s) | elapsed {(time.monotonic() - started) / 60:.1f} min"
        )

    rows = sort_rows(rows)
    write_trajectories(rows, run_dir / RESULTS_FILE)
    plot_fig6(rows, config, run_dir / FIGURE_FILE)
    return rows


def sort_rows(rows: list[Row]) -> list[Row]:
    def key(row: Row) -> tuple[Any, ...]:
        beta = -1.0 if row["beta"] is None else row["beta"]
        iteration = -1 if row["iteration"] is None else row["iteration"]
        return row["experiment"], METHOD_ORDER[row["method"]], beta, iteration

    return sorted(rows, key=key)


def write_trajectories(rows: list[Row], path: Path) -> None:
    """Write the rows as Parquet, atomically: a hidden temporary file in the same folder, renamed over
    the target (a reader sees the old file or the new one)."""
    table = pa.Table.from_pylist([dict(r, schema_version=mk.SCHEMA_VERSION) for r in rows], schema=SCHEMA)
    write_parquet(table, path, compression="zstd")


def _reference(rows: list[Row], experiment: str, role: str) -> Row:
    return next(r for r in rows if r["experiment"] == experiment and r["method"] == role)


def _trajectory(rows: list[Row], experiment: str, method: str, beta: float) -> list[Row]:
    return sorted(
        (r for r in rows if r["experiment"] == experiment and r["method"] == method and r["beta"] == beta),
        key=lambda r: r["iteration"],
    )


def plot_fig6(rows: list[Row], config: mk.MarkovConfig, path: Path) -> None:
    """Like the paper's Fig. 6: per experiment, forget KL (x; Forget1 solid, Forget2 dashed) against
    retain KL (y) along the unlearning path of NPO and SimNPO at the experiment's β; Retrain's
    (Forget1, retain) as ★ and (Forget2, retain) as ●, with its Forget2 KL as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(config.experiments)
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        experiment = config.experiments[name]
        for method in mk.FIG6_METHODS:
            beta = float(getattr(experiment.beta, method))
            path_rows = _trajectory(rows, name, method, beta)
            retain = [r["retain_kl"] for r in path_rows]
            for chain, style, marker in (("forget1", "-", "o"), ("forget2", "--", "s")):
                ax.plot(
                    [r[f"{chain}_kl"] for r in path_rows],
                    retain,
                    style,
                    marker=marker,
                    markersize=3.5,
                    color=COLORS[method],
                    label=f"{LABELS[method]} (β={beta:g}) {chain.capitalize()}",
                )
        retrain = _reference(rows, name, "retrain")
        ax.plot(
            retrain["forget1_kl"],
            retrain["retain_kl"],
            "*",
            color="black",
            markersize=13,
            label="Retrain Forget1",
        )
        ax.plot(
            retrain["forget2_kl"],
            retrain["retain_kl"],
            "o",
            markerfacecolor="none",
            markeredgecolor="black",
            markersize=16,
            label="Retrain Forget2",
        )
        ax.axvline(retrain["forget2_kl"], color="black", linestyle=":", linewidth=0.8)
        ax.set_title(f"({name}) {experiment.description}".strip())
        ax.set_xlabel("forget KL (forget quality, higher = more forgotten)")
        ax.set_ylabel("retain KL (retain distance, lower = better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex}.png"
    try:
        fig.savefig(temporary, dpi=130)
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        temporary.unlink(missing_ok=True)


def summary_lines(rows: list[Row], config: mk.MarkovConfig) -> list[str]:
    """Original and Retrain KLs per experiment and, for every run, the retain KL at the first evaluation
    where its Forget2 KL reaches Retrain's (Fig. 6's comparison), the same for Forget1, and the final
    KLs. The experiment's own (the paper's) β are marked *."""
    lines = []
    for name, experiment in config.experiments.items():
        lengths = "/".join(str(experiment.length(c)) for c in mk.CHAINS)
        seen = "in" if experiment.forget2_in_pretraining else "NOT in"
        lines.append(
            f"\nexperiment {name}: {experiment.description} "
            f"(lengths retain/F1/F2 {lengths}; Forget2 {seen} pretraining)"
        )
        lines.append(f"  {'model':<15}{'forget1_kl':>12}{'forget2_kl':>12}{'retain_kl':>12}")
        for role in ("original", "retrain"):
            r = _reference(rows, name, role)
            lines.append(
                f"  {role:<15}{r['forget1_kl']:>12.4f}{r['forget2_kl']:>12.4f}{r['retain_kl']:>12.4f}"
            )
        retrain = _reference(rows, name, "retrain")
        targets = {chain: retrain[f"{chain}_kl"] for chain in ("forget2", "forget1")}
        heads = "".join(
            f"{f'first {c[0].upper()}{c[-1]} >= Retrain ({t:.3f})':>30}" for c, t in targets.items()
        )
        lines.append(f"  {'run':<15}{heads}{'final':>24}")
        sub = f"{'iteration':>15}{'retain_kl':>15}" * 2
        lines.append(f"  {'':<15}{sub}{'F1':>8}{'F2':>8}{'retain':>8}")
        for method in mk.FIG6_METHODS:
            paper_beta = float(getattr(experiment.beta, method))
            for beta in config.betas(name, method):
                path = _trajectory(rows, name, method, beta)
                cells = ""
                for chain, target in targets.items():
                    hit = first_reaching(
                        [r["iteration"] for r in path],
                        [r[f"{chain}_kl"] for r in path],
                        [r["retain_kl"] for r in path],
                        target,
                    )
                    cells += f"{hit[0]:>15d}{hit[1]:>15.4f}" if hit else f"{'not reached':>30}"
                mark = "*" if math.isclose(beta, paper_beta) else ""
                last = path[-1]
                lines.append(
                    f"  {LABELS[method] + ' β=' + format(beta, 'g') + mark:<15}{cells}"
                    f"{last['forget1_kl']:>8.3f}{last['forget2_kl']:>8.3f}{last['retain_kl']:>8.4f}"
                )
        lines.append(
            f"  (final = iteration {config.unlearn.iterations}; * = the experiment's β, drawn in fig6.png)"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Command line (called by raysimnpo.sweep for a file with `benchmark: markov`)
# --------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """Validate the sweep file with `--set`/`--storage` applied (a mistake: one line, exit 2, nothing
    written), then run the study on Ray and print the summary."""
    log = lambda message: print(message, flush=True)  # noqa: E731
    try:
        overrides: Sequence[str] = [*args.overrides, *([f"storage={args.storage}"] if args.storage else [])]
        sweep = mk.load_markov_sweep(args.config or args.sweep, list(overrides))
        storage = check_storage(sweep.storage)
        if storage.remote:
            raise UserInputError(
                f"storage: {storage.uri} - the Markov study writes local files; give a local folder"
            )
        run_dir = Path(storage.uri) / sweep.name
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    start_ray(args.address, args.num_cpus)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(sweep.model_dump_json(indent=2))
    log(f"[markov] {len(sweep.markov.experiments)} experiments -> {run_dir}")
    rows = run_markov(sweep, run_dir, log)
    for line in summary_lines(rows, sweep.markov):
        print(line)
    print(f"\nresults:  {run_dir / RESULTS_FILE}")
    print(f"figure:   {run_dir / FIGURE_FILE}")
    print(f"time:     {(time.monotonic() - started) / 60:.1f} min")
    return 0
