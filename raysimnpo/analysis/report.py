"""Build the report of one or several sweep runs from their Parquet results (DESIGN §3, §8).

`build_report(run_dirs, out)` reads every run first (a bad folder raises the UserInputError of
`raysimnpo.results.read_table` before anything is written) and then writes into `out`:

    pareto.parquet     every completed trial: FQ, MU, front rank per method and overall, dominated flag
    pareto.png         FQ (log) vs MU, fronts per method, Original / Retrain (the ideal corner) marked,
                       the FQ noise ceiling when a `forget_quality_noise_ceiling` row exists (Fig. 4)
    table.md/.csv      the paper's Table 2 layout; the selection rule is in `analysis.tables`
    hypervolume.csv    hypervolume per method, reference point (FQ = 0, MU = 0)
    curves.png         forget / retain loss per epoch and trial
    weights.png/.csv   gradient weight vs |y| per epoch of the selected NPO / SimNPO trials with Pearson's r
                       (Fig. 5), NPO's weight histograms (Fig. 3); the csv has r per method and epoch
    length_split.csv   FQ on the shortest / longest 50% of the forget set by |y| (Figs. 2, A4)
    truth_ratio_by_length.png   the truth-ratio distributions behind length_split.csv
    relearn.png/.csv   forget quality per relearning epoch of the attacked trials, shortest and random
                       relearn (Fig. A3); empty when the run has no `relearn` rows
    generations.md     greedy answers to sampled forget questions (paper Table A4)
    importance.png/.csv  fANOVA hyperparameter importance per method and objective (Optuna study)
    history.png/.csv   each objective per trial in study order with the best so far (Optuna study)
    report.html        all of the above in one offline file (figures embedded as base64 PNG)

`export_best(run_dir, method, to)` copies the checkpoint folder of the method's selected trial.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..errors import UserInputError
from ..maths.metrics import NOISE_CEILING
from ..results import write_parquet
from ..results.storage import check_writable, open_storage
from . import length, relearn, search, tables
from .fronts import HV_REFERENCE, front_table, hypervolumes
from .load import (
    FORGET_QUALITY,
    MODEL_UTILITY,
    Results,
    completed_trials,
    load_runs,
    methods,
    reference_trials,
)
from .plots import (
    curves_figure,
    history_figure,
    importance_figure,
    pareto_figure,
    relearn_figure,
    save_png,
    truth_ratio_by_length_figure,
    weights_figure,
)

REPORT_FILES = (
    "pareto.parquet",
    "pareto.png",
    "table.md",
    "table.csv",
    "hypervolume.csv",
    "curves.png",
    "weights.png",
    "weights.csv",
    "length_split.csv",
    "truth_ratio_by_length.png",
    "relearn.png",
    "relearn.csv",
    "generations.md",
    "importance.png",
    "importance.csv",
    "history.png",
    "history.csv",
    "report.html",
)
PARETO_COLUMNS = (
    "run",
    "trial_id",
    "method",
    "seed",
    "config",
    "params_json",
    FORGET_QUALITY,
    MODEL_UTILITY,
    "rank_method",
    "rank_overall",
    "on_method_front",
    "dominated",
    "checkpoint",
)


@dataclass(frozen=True)
class Report:
    """What `build_report` computed and where it wrote it."""

    out: Path
    files: dict[str, Path]
    selection: pl.DataFrame
    hypervolume: pl.DataFrame
    front: pl.DataFrame
    length_split: pl.DataFrame
    weight_correlations: pl.DataFrame


def default_out(run_dirs: Sequence[str]) -> Path:
    """RUN_DIR/report for a single local (or file://) run; several runs or a remote run need --out."""
    if len(run_dirs) != 1:
        raise UserInputError(f"--out: required with several RUN_DIRs ({len(run_dirs)} given); name a folder")
    run_dir = os.fspath(run_dirs[0])
    if run_dir.startswith("file://"):
        run_dir = run_dir.removeprefix("file://")
    elif "://" in run_dir:
        raise UserInputError(
            f"--out: required for a RUN_DIR on a remote filesystem ({run_dir}); name a local folder"
        )
    return Path(run_dir).expanduser() / "report"


def report_folder(run_dirs: Sequence[str], out: str | os.PathLike[str] | None) -> Path:
    """Where the report goes: `out`, else RUN_DIR/report; it must not be an existing file."""
    target = Path(out).expanduser() if out is not None else default_out(run_dirs)
    if target.exists() and not target.is_dir():
        raise UserInputError(f"--out: {target} is a file; give a folder (it is created if missing)")
    check_writable(
        open_storage(str(target)), "--out" if out is not None else "--out (default RUN_DIR/report)"
    )
    return target


def _summary_lines(res: Results, selection: pl.DataFrame) -> list[str]:
    lines = []
    for run in res.runs:
        trials = res.trials.filter((pl.col("run") == run.label) & (pl.col("kind") == "trial"))
        done = trials.filter(pl.col("status") == "completed").height
        lines.append(
            f"Run `{run.label}` ({run.root}): {trials.height} trials, {done} completed, "
            f"{trials.height - done} failed; methods: {', '.join(sorted(set(trials['method'].to_list()))) or 'none'}."
        )
        for row in selection.filter(pl.col("run") == run.label).iter_rows(named=True):
            lines.append(
                f"Selected {row['method']}: trial {row['trial_id']} (seeds {', '.join(map(str, row['seeds']))}), "
                f"FQ {row[FORGET_QUALITY]:.3g}, MU {row[MODEL_UTILITY]:.3f} — {row['reason']}."
            )
    return lines


def _html(
    res: Results,
    summary: list[str],
    images: dict[str, bytes],
    paper: list[tables.TextTable],
    hv: tables.TextTable,
    generations: list[tables.TextTable],
    lengths: tables.TextTable,
    correlations: tables.TextTable,
    relearning: tables.TextTable,
    importance: tables.TextTable,
) -> str:
    def img(name: str, alt: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    def wide(table: str, kind: str = "") -> str:
        # A table scrolls inside its own box rather than widening the page past the window.
        return f'<div class="wide {kind}">{table}</div>'

    # Table 2 has 18 columns: compact cells, and headers that wrap between words, so that it fits
    # a 1280 px window (checked with headless Chromium: no horizontal page scroll).
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 2em;max-width:1400px;"
        "box-sizing:border-box}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
        "td,th{border:1px solid #bbb;padding:3px 6px;vertical-align:top}"
        "th{background:#eee}caption{caption-side:top;text-align:left;padding:4px 0;max-width:1200px}"
        ".wide{max-width:100%;overflow-x:auto}"
        ".paper table{font-size:0.78em}.paper td,.paper th{padding:2px 4px}"
        ".paper th{min-width:3.2em;max-width:6em}.paper td:last-child{min-width:10em}"
        "img{max-width:100%}"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>raysimnpo report: {html.escape(', '.join(res.labels))}</title>",
        f"<style>{style}</style></head><body>",
        f"<h1>raysimnpo report: {html.escape(', '.join(res.labels))}</h1>",
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>",
        "<h2>Forget quality vs model utility</h2>",
        img("pareto.png", "FQ (log) vs MU per trial, fronts per method"),
        "<h2>Hypervolume</h2>",
        f"<p>Reference point (FQ = {HV_REFERENCE[0]:g}, MU = {HV_REFERENCE[1]:g}); FQ on its natural scale.</p>",
        wide(tables.html_table(hv)),
        "<h2>Table 2 layout</h2>",
        *(f"<h3>Run {html.escape(t.title)}</h3>\n" + wide(tables.html_table(t), "paper") for t in paper),
        "<h2>Training curves</h2>",
        img("curves.png", "forget and retain loss per epoch"),
        "<h2>Response length: forget quality on the short and long halves (Figs. 2, A4)</h2>",
        wide(tables.html_table(lengths)),
        img("truth_ratio_by_length.png", "forget truth ratios of Retrain, NPO and SimNPO per length half"),
        "<h2>Gradient weights vs response length (Figs. 3, 5)</h2>",
        wide(tables.html_table(correlations)),
        img("weights.png", "gradient weight vs |y| per epoch, NPO weight histograms"),
        "<h2>Relearning attacks (Fig. A3)</h2>",
        wide(tables.html_table(relearning)),
        img("relearn.png", "forget quality vs relearning epoch, shortest and random relearn"),
        "<h2>The search: hyperparameter importance and optimisation history</h2>",
        wide(tables.html_table(importance)),
        img("importance.png", "fANOVA importance of each searched setting per method and objective"),
        img("history.png", "objective values per trial number with the best so far"),
        "<h2>Generation examples (Table A4 layout)</h2>",
        f"<p>Repetitive: fraction of repeated word 3-grams &gt; {tables.REPETITION_THRESHOLD}.</p>",
    ]
    if not generations:
        parts.append("<p>No generations were recorded for the forget set.</p>")
    for t in generations:
        parts += [f"<h3>{html.escape(t.title)}</h3>", wide(tables.html_table(t))]
    parts.append("</body></html>")
    return "\n".join(parts)


def length_text_table(split: pl.DataFrame) -> tables.TextTable:
    caption = (
        "Forget quality on the shortest 50% and the longest 50% of the forget set by answer length |y|: "
        "KS-test p-value of the model's truth ratios on that half against Retrain's on the same examples."
    )
    rows = [
        [
            r["run"],
            r["row"],
            r["trial_id"],
            length.HALF_LABELS[r["half"]],
            str(r["examples"]),
            f"{r['min_tokens']}–{r['max_tokens']}",
            tables.format_value(r[FORGET_QUALITY], fq=True),
        ]
        for r in split.iter_rows(named=True)
    ]
    return tables.TextTable(caption, ["Run", "Model", "Trial", "Half", "Examples", "|y|", "FQ"], rows)


def correlation_text_table(correlations: pl.DataFrame) -> tables.TextTable:
    caption = (
        "Pearson's r between each forget example's gradient weight (NPO: w, eq. 3; SimNPO: w', eq. 5) and "
        "|y| per epoch, for the selected trials; empty when no weights were recorded."
    )
    rows = [
        [
            r["run"],
            r["method"],
            r["trial_id"],
            str(r["epoch"]),
            tables.format_value(r["pearson_r"]),
            f"{r['weight_mean']:.3g}",
        ]
        for r in correlations.iter_rows(named=True)
    ]
    return tables.TextTable(caption, ["Run", "Method", "Trial", "Epoch", "Pearson r", "Mean weight"], rows)


def relearn_text_table(curves: pl.DataFrame) -> tables.TextTable:
    caption = (
        "Forget quality after each relearning epoch (0 = the unlearned model) when the attacked trial is "
        "fine-tuned on part of the forget set: its shortest answers, or random draws (mean ± std over seeds); "
        "empty when no attack was run (`relearn:` in the sweep file or python -m raysimnpo.relearn)."
    )
    rows = [
        [
            r["run"],
            r["method"],
            r["trial_id"],
            r["attack"],
            str(r["relearn_examples"]),
            str(r["epoch"]),
            tables.format_value(r["fq_mean"], fq=True)
            + (f" ± {r['fq_std']:.2g}" if r["fq_std"] is not None else ""),
        ]
        for r in curves.iter_rows(named=True)
    ]
    return tables.TextTable(caption, ["Run", "Method", "Trial", "Attack", "Relearned", "Epoch", "FQ"], rows)


def importance_text_table(importances: pl.DataFrame) -> tables.TextTable:
    caption = (
        "Importance of each searched setting for each objective, per method: Optuna's fANOVA evaluator over "
        "the method's finished trials (a method's importances sum to 1); empty with fewer than 2 trials."
    )
    rows = [
        [r["run"], r["method"], r["objective"], r["param"], f"{r['importance']:.2f}", str(r["trials"])]
        for r in importances.iter_rows(named=True)
    ]
    return tables.TextTable(caption, ["Run", "Method", "Objective", "Setting", "Importance", "Trials"], rows)


def build_report(
    run_dirs: Sequence[str], out: str | os.PathLike[str] | None = None, *, examples: int = 8, seed: int = 0
) -> Report:
    """Read the runs, then write every report file into `out` (default RUN_DIR/report); see module doc."""
    if not run_dirs:
        raise UserInputError("RUN_DIR: none given; give at least one <storage>/<sweep> folder")
    target = report_folder(run_dirs, out)
    return write_report(load_runs(run_dirs), target, examples=examples, seed=seed)


def noise_ceilings(res: Results) -> dict[str, float]:
    """Per run, the FQ noise ceiling when its results have a `forget_quality_noise_ceiling` metric
    row (stage final; the largest if several trials carry one); runs without one are left out."""
    rows = res.metrics.filter((pl.col("metric") == NOISE_CEILING) & (pl.col("stage") == "final"))
    if rows.is_empty():
        return {}
    per_run = rows.group_by("run").agg(pl.col("value").max())
    return dict(zip(per_run["run"].to_list(), per_run["value"].to_list(), strict=True))


def write_report(res: Results, target: Path, *, examples: int = 8, seed: int = 0) -> Report:
    """Write every report file of the loaded runs `res` into `target` (created if needed)."""
    points = completed_trials(res)
    front = front_table(points).select(PARETO_COLUMNS)
    hv = hypervolumes(points)
    selection = tables.select_configurations(res)
    paper = tables.paper_table(res, selection)
    refs = reference_trials(res)
    sample = tables.generation_examples(res, selection, count=examples, seed=seed)
    curves = res.metrics.filter(pl.col("stage") == "epoch")
    ratios = length.truth_ratios_by_half(res, selection)
    split = length.length_split(ratios)
    weights = length.selected_weights(res, selection)
    correlations = length.weight_correlations(weights)
    curves_relearn = relearn.relearn_curves(res)
    importances, history = search.search_tables([(r.label, r.run_dir) for r in res.runs], seed=seed)

    chosen = list(zip(selection["run"].to_list(), selection["trial_id"].to_list(), strict=True))

    target.mkdir(parents=True, exist_ok=True)
    files = {name: target / name for name in REPORT_FILES}
    write_parquet(front.to_arrow(), files["pareto.parquet"], compression="zstd")
    images = {
        "pareto.png": save_png(
            pareto_figure(front, refs, res.labels, chosen, noise_ceilings(res)), files["pareto.png"]
        ),
        "curves.png": save_png(curves_figure(curves, res.trials, res.labels), files["curves.png"]),
        "weights.png": save_png(weights_figure(weights, correlations), files["weights.png"]),
        "truth_ratio_by_length.png": save_png(
            truth_ratio_by_length_figure(ratios, split), files["truth_ratio_by_length.png"]
        ),
        "relearn.png": save_png(relearn_figure(curves_relearn), files["relearn.png"]),
        "importance.png": save_png(importance_figure(importances), files["importance.png"]),
        "history.png": save_png(history_figure(history), files["history.png"]),
    }
    importances.write_csv(files["importance.csv"])
    history.write_csv(files["history.csv"])
    curves_relearn.write_csv(files["relearn.csv"])
    split.write_csv(files["length_split.csv"])
    correlations.write_csv(files["weights.csv"])
    files["table.md"].write_text(tables.table_markdown(paper), encoding="utf-8")
    paper.write_csv(files["table.csv"])
    hv.write_csv(files["hypervolume.csv"])
    files["generations.md"].write_text(tables.generations_markdown(sample), encoding="utf-8")
    summary = _summary_lines(res, selection)
    document = _html(
        res,
        summary,
        images,
        tables.paper_text_tables(paper),
        tables.hypervolume_text_table(hv),
        tables.generations_text_tables(sample),
        length_text_table(split),
        correlation_text_table(correlations),
        relearn_text_table(curves_relearn),
        importance_text_table(importances),
    )
    files["report.html"].write_text(document, encoding="utf-8")
    return Report(target, files, selection, hv, front, split, correlations)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def best_checkpoint(res: Results, method: str) -> tuple[str, Path]:
    """(trial id, checkpoint folder) of `method`'s selected trial in the (single) run of `res`.

    A checkpoint path that no longer exists is looked for under RUN_DIR/checkpoints/<trial_id> (a run
    folder that was moved); raises UserInputError when the method is unknown or no folder exists.
    """
    present = methods(res)
    run = res.runs[0]
    if method not in present:
        raise UserInputError(
            f"--export-best: method {method!r} has no trials in {run.run_dir}; methods present: "
            f"{', '.join(present) or 'none'}"
        )
    chosen = tables.select_configurations(res).filter(pl.col("method") == method)
    if chosen.is_empty():
        raise UserInputError(
            f"--export-best: method {method!r} has no completed trial with FQ and MU in {run.run_dir}"
        )
    trial_id = chosen["trial_id"][0]
    row = res.trials.filter(pl.col("trial_id") == trial_id)
    recorded = row["checkpoint"][0]
    candidates = [Path(recorded).expanduser()] if recorded else []
    if "://" not in run.run_dir or run.run_dir.startswith("file://"):
        candidates.append(Path(run.run_dir.removeprefix("file://")).expanduser() / "checkpoints" / trial_id)
    for path in candidates:
        if path.is_dir():
            return trial_id, path
    raise UserInputError(
        f"--export-best: checkpoint of trial {trial_id} ({method}) not found "
        f"(looked in {', '.join(str(p) for p in candidates) or 'no recorded path'}); "
        "the trial's checkpoint folder must exist on this machine"
    )


def check_export_target(to: str | os.PathLike[str]) -> Path:
    target = Path(to).expanduser()
    if target.exists():
        raise UserInputError(f"--to: {target} already exists; give a folder that does not exist yet")
    check_writable(open_storage(str(target)), "--to")  # made and removed again: the copy makes it
    return target


def export_best(run_dir: str, method: str, to: str | os.PathLike[str]) -> tuple[str, Path]:
    """Copy the checkpoint folder of `method`'s selected trial to `to` (which must not exist yet)."""
    target = check_export_target(to)
    trial_id, source = best_checkpoint(load_runs([run_dir]), method)
    shutil.copytree(source, target)
    return trial_id, target
