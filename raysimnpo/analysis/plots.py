"""Figures of a report, drawn with matplotlib's Agg backend (no display needed).

* `pareto_plot`: like the SimNPO paper's Fig. 4 — forget quality on a log x-axis against model
  utility, one point per completed trial coloured by method, each method's non-dominated front as a
  step line (the boundary of the region its trials dominate), Original (star) and Retrain (cross) as
  labelled reference points. With several runs the marker shape (and the front's line style) tells the
  runs apart.
* `curves_plot`: per-epoch forget and retain losses of every trial (metrics stage "epoch"), one line per
  trial coloured by method; failed trials dashed.
* `weights_figure`: gradient weight vs |y| per epoch (Fig. 5) and NPO's weight histograms (Fig. 3).
* `truth_ratio_by_length_figure`: forget truth ratios on the short / long halves (Figs. 2, A4).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .length import HALF_LABELS, HALVES  # noqa: E402
from .load import FORGET_QUALITY, MODEL_UTILITY, REFERENCE_LABELS  # noqa: E402

RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "h", "<", ">")
RUN_LINESTYLES = ("-", "--", ":", "-.")
CURVE_METRICS = (("forget_loss", "Forget loss"), ("retain_loss", "Retain loss"))
DPI = 130
SELECTED_LABEL = "selected (Table 2)"


def method_colours(methods: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A fixed colour per method (tab10 in sorted order), the same in every figure of a report."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(set(methods)))}


def _fq_floor(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0 and np.isfinite(v)]
    return (min(positive) / 10.0) if positive else 1e-10


def pareto_figure(
    front: pl.DataFrame,
    references: pl.DataFrame,
    runs: Sequence[str],
    selected: Sequence[tuple[str, str]] = (),
    noise_ceilings: dict[str, float] | None = None,
) -> Figure:
    """`front`: `analysis.fronts.front_table` rows; `references`: Original/Retrain rows with FQ and MU;
    `selected`: (run, trial_id) of each method's selected trial, drawn with a ring.

    Retrain is the ideal corner (an unlearned model cannot beat its FQ or, by much, its MU): dotted
    guides run from it along both axes. `noise_ceilings` (run -> FQ, from a
    `forget_quality_noise_ceiling` metric row when the results have one): the FQ a model as good
    as Retrain reaches through sampling noise alone, drawn as a dashed vertical line.

    FQ values ≤ 0 (a p-value that underflowed) are drawn at a floor a decade below the smallest
    positive FQ, so that the log axis can show them.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colours = method_colours(front["method"].to_list())
    several = len(runs) > 1
    floor = _fq_floor(front[FORGET_QUALITY].to_list() + references[FORGET_QUALITY].drop_nulls().to_list())

    def fq(values: Sequence[float]) -> np.ndarray:
        return np.maximum(np.asarray(values, dtype=np.float64), floor)

    for r, run in enumerate(runs):
        marker, style = RUN_MARKERS[r % len(RUN_MARKERS)], RUN_LINESTYLES[r % len(RUN_LINESTYLES)]
        in_run = front.filter(pl.col("run") == run)
        for method in sorted(colours):
            points = in_run.filter(pl.col("method") == method)
            if points.is_empty():
                continue
            label = f"{method} ({run})" if several else method
            ax.scatter(
                fq(points[FORGET_QUALITY].to_list()),
                points[MODEL_UTILITY].to_numpy(),
                s=36,
                marker=marker,
                color=colours[method],
                alpha=0.75,
                edgecolors="white",
                linewidths=0.5,
                label=label,
                zorder=3,
            )
            best = points.filter(pl.col("on_method_front")).sort(FORGET_QUALITY)
            x, y = fq(best[FORGET_QUALITY].to_list()), best[MODEL_UTILITY].to_numpy()
            # Maximising both: between two front points the dominated region's edge sits at the MU of
            # the point to the right, so the line drops at each point and runs flat to the next one.
            ax.step(x, y, where="pre", color=colours[method], linestyle=style, linewidth=1.6, zorder=2)
        chosen = in_run.filter(pl.col("trial_id").is_in([t for r, t in selected if r == run]))
        if chosen.height:
            ax.scatter(
                fq(chosen[FORGET_QUALITY].to_list()),
                chosen[MODEL_UTILITY].to_numpy(),
                s=150,
                marker="o",
                facecolors="none",
                edgecolors="black",
                linewidths=1.0,
                zorder=4,
                label=None if SELECTED_LABEL in ax.get_legend_handles_labels()[1] else SELECTED_LABEL,
            )
        refs = references.filter((pl.col("run") == run) & pl.col(FORGET_QUALITY).is_not_null())
        for ref in refs.iter_rows(named=True):
            kind = ref["kind"]
            ref_x, ref_y = float(fq([ref[FORGET_QUALITY]])[0]), ref[MODEL_UTILITY]
            if ref_y is None:
                continue
            star = kind == "original"
            ax.scatter(
                [ref_x],
                [ref_y],
                marker="*" if star else "X",
                s=220 if star else 130,
                color="black" if star else "#444",
                edgecolors="white",
                linewidths=0.8,
                zorder=4,
            )
            text = REFERENCE_LABELS[kind] + (f" ({run})" if several else "")
            if kind == "retrain":
                text += " = ideal corner"
                guide = {"color": "#888", "linestyle": ":", "linewidth": 1.0, "zorder": 1}
                ax.axvline(ref_x, **guide)
                ax.axhline(ref_y, **guide)
            ax.annotate(text, (ref_x, ref_y), xytext=(6, 6), textcoords="offset points", fontsize=9, zorder=5)
        ceiling = (noise_ceilings or {}).get(run)
        if ceiling is not None and np.isfinite(ceiling) and ceiling > 0:
            ax.axvline(
                float(fq([ceiling])[0]),
                color="#b22222",
                linestyle=RUN_LINESTYLES[r % len(RUN_LINESTYLES)] if several else "--",
                linewidth=1.2,
                zorder=1,
                label=f"FQ noise ceiling ({run})" if several else "FQ noise ceiling",
            )
    ax.set_xscale("log")
    ax.set_xlim(right=6.0)  # FQ ≤ 1: room for the Retrain label
    ax.set_xlabel("Forget quality (KS-test p-value vs Retrain, log scale) →")
    ax.set_ylabel("Model utility →")
    ax.set_title("Forget quality vs model utility (lines: each method's Pareto front)")
    ax.grid(True, which="major", alpha=0.3)
    if front.height:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == SELECTED_LABEL)  # stable: ring last
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no completed trials", transform=ax.transAxes, ha="center", color="grey")
    fig.tight_layout()
    return fig


def curves_figure(curves: pl.DataFrame, trials: pl.DataFrame, runs: Sequence[str]) -> Figure:
    """`curves`: metrics rows of stage "epoch"; `trials`: the trials table (method, status per trial)."""
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(10, 4), squeeze=False)
    info = trials.filter(pl.col("kind") == "trial").select("run", "trial_id", "method", "status")
    data = curves.join(info, on=["run", "trial_id"], how="inner")
    colours = method_colours(info["method"].to_list())
    several = len(runs) > 1
    for ax, (metric, title) in zip(axes[0], CURVE_METRICS, strict=True):
        rows = data.filter(pl.col("metric") == metric)
        legend: dict[str, Line2D] = {}
        for (run, _), line in rows.sort("epoch").group_by(["run", "trial_id"], maintain_order=True):
            method, failed = line["method"][0], line["status"][0] == "failed"
            marker = RUN_MARKERS[list(runs).index(run) % len(RUN_MARKERS)] if several else "o"
            ax.plot(
                line["epoch"].to_numpy(),
                line["value"].to_numpy(),
                color=colours[method],
                marker=marker,
                markersize=3,
                linewidth=1.2,
                alpha=0.8,
                linestyle="--" if failed else "-",
            )
            label = f"{method} ({run})" if several else method
            legend.setdefault(label, Line2D([], [], color=colours[method], marker=marker, markersize=3))
            if failed:
                legend.setdefault("failed", Line2D([], [], color="grey", linestyle="--"))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if legend:
            ordered = sorted(legend, key=lambda k: (k == "failed", k))
            ax.legend([legend[k] for k in ordered], ordered, fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {metric} per epoch", transform=ax.transAxes, ha="center", color="grey")
    fig.suptitle("Training curves per trial (dashed: failed trials)")
    fig.tight_layout()
    return fig


MAX_WEIGHT_EPOCHS = 6


def shown_epochs(epochs: Sequence[int], most: int = MAX_WEIGHT_EPOCHS) -> list[int]:
    """All epochs when there are at most `most`, else `most` of them evenly spaced (first and last kept)."""
    ordered = sorted(set(int(e) for e in epochs))
    if len(ordered) <= most:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, most).round().astype(int)
    return [ordered[i] for i in sorted(set(picks.tolist()))]


def weights_figure(weights: pl.DataFrame, correlations: pl.DataFrame) -> Figure:
    """Gradient weights of each method's selected trial (`analysis.length.selected_weights`): per
    (run, method) a row of weight vs |y| scatters, one panel per epoch with Pearson's r in its title
    (paper Fig. 5), then per run a row of NPO's weight histograms per epoch (Fig. 3)."""
    groups = weights.select("run", "method", "trial_id").unique(maintain_order=True).sort("run", "method")
    rows: list[tuple[str, str, str, str]] = [
        (r["run"], r["method"], r["trial_id"], "scatter") for r in groups.iter_rows(named=True)
    ]
    rows += [(r, m, t, "hist") for r, m, t, _ in rows if m == "npo"]
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no gradient weights recorded (weights table empty: no NPO / SimNPO trial run in-process)",
            transform=ax.transAxes,
            ha="center",
            color="grey",
            fontsize=9,
        )
        return fig
    epochs = shown_epochs(weights["epoch"].to_list())
    colours = method_colours(groups["method"].to_list())
    several = groups["run"].n_unique() > 1
    fig, axes = plt.subplots(
        len(rows), len(epochs), figsize=(3.0 * len(epochs), 2.7 * len(rows)), squeeze=False
    )
    r_of = {(c["run"], c["method"], c["epoch"]): c["pearson_r"] for c in correlations.iter_rows(named=True)}
    for row_axes, (run, method, trial_id, kind) in zip(axes, rows, strict=True):
        data = weights.filter((pl.col("run") == run) & (pl.col("trial_id") == trial_id))
        name = f"{method} ({run})" if several else method
        for ax, epoch in zip(row_axes, epochs, strict=True):
            part = data.filter(pl.col("epoch") == epoch)
            w = part["weight"].to_numpy()
            if kind == "scatter":
                ax.scatter(part["answer_tokens"].to_numpy(), w, s=10, alpha=0.7, color=colours[method])
                r = r_of.get((run, method, epoch))
                shown = "–" if r is None or not np.isfinite(r) else f"{r:.2f}"
                ax.set_title(f"{name} epoch {epoch}: Pearson r = {shown}", fontsize=9)
                ax.set_xlabel("|y| (answer tokens)", fontsize=8)
                ax.set_ylabel("w'" if method == "simnpo" else "w", fontsize=8)
            else:
                ax.hist(w, bins=20, color=colours[method], alpha=0.8)
                ax.set_title(f"{name} epoch {epoch}: weight histogram", fontsize=9)
                ax.set_xlabel("w (eq. 3)", fontsize=8)
                ax.set_ylabel("examples", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
    fig.suptitle(
        "Gradient weights of the selected trials vs response length (Fig. 5; NPO histograms: Fig. 3)"
    )
    fig.tight_layout()
    return fig


TRUTH_RATIO_ROWS = ("Retrain", "npo", "simnpo")


def truth_ratio_by_length_figure(ratios: pl.DataFrame, split: pl.DataFrame) -> Figure:
    """Forget truth-ratio distributions of Retrain, NPO and SimNPO (selected trials) on the shortest
    and the longest 50% of the forget set by |y| (paper Figs. 2 and A4), one panel per run and half;
    the legend gives each model's FQ on that half. `ratios`: `analysis.length.truth_ratios_by_half`,
    `split`: `analysis.length.length_split`."""
    runs = ratios["run"].unique(maintain_order=True).to_list()
    if not runs:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.axis("off")
        ax.text(
            0.5, 0.5, "no forget truth ratios of Retrain", transform=ax.transAxes, ha="center", color="grey"
        )
        return fig
    fig, axes = plt.subplots(len(runs), len(HALVES), figsize=(10, 3.6 * len(runs)), squeeze=False)
    colours = {"Retrain": "#444", **method_colours(["npo", "simnpo"])}
    fq_of = {(r["run"], r["row"], r["half"]): r["forget_quality"] for r in split.iter_rows(named=True)}
    for row_axes, run in zip(axes, runs, strict=True):
        in_run = ratios.filter(pl.col("run") == run)
        # R spans decades (a long tail above 1): log-spaced bins on a log axis; the KS test behind FQ
        # compares ranks, so this view loses nothing. R = 0 (underflow) is drawn at the smallest R > 0.
        values = in_run.filter(pl.col("row").is_in(list(TRUTH_RATIO_ROWS)))["truth_ratio"].to_numpy()
        positive = values[values > 0]
        low = positive.min() if positive.size else 1e-3
        high = max(positive.max(), low * 10) if positive.size else 1.0
        bins = np.geomspace(low, high, 31)
        for ax, half in zip(row_axes, HALVES, strict=True):
            for label in TRUTH_RATIO_ROWS:
                part = in_run.filter((pl.col("row") == label) & (pl.col("half") == half))
                if part.is_empty():
                    continue
                fq = fq_of.get((run, label, half))
                ax.hist(
                    np.maximum(part["truth_ratio"].to_numpy(), low),
                    bins=bins,
                    histtype="step",
                    linewidth=1.6,
                    color=colours[label],
                    label=f"{label} (FQ {fq:.3g})" if fq is not None else label,
                )
            title = f"{HALF_LABELS[half]} |y|" + (f" ({run})" if len(runs) > 1 else "")
            ax.set_title(title, fontsize=10)
            ax.set_xscale("log")
            ax.set_xlabel("truth ratio R (log scale)", fontsize=9)
            ax.set_ylabel("forget examples", fontsize=9)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle("Forget truth ratios by response length (Figs. 2, A4); FQ vs Retrain on the same half")
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> bytes:
    """Write the figure as PNG to `path` and return the bytes (for embedding); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def relearn_figure(curves: pl.DataFrame) -> Figure:
    """Forget quality (log) vs relearning epoch per method, one panel per attack (paper Fig. A3):
    shortest-relearn as a line, random-relearn as the mean over seeds with a ±1 std band.
    `curves`: `analysis.relearn.relearn_curves`."""
    if curves.is_empty():
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no relearning attacks recorded", transform=ax.transAxes, ha="center", color="grey")
        return fig
    attacks = [a for a in ("shortest", "random") if a in set(curves["attack"].to_list())]
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 3.8), squeeze=False)
    colours = method_colours(sorted(set(curves["method"].to_list())))
    floor = _fq_floor(curves["fq_mean"].to_list())
    multi_run = curves["run"].n_unique() > 1
    for ax, attack in zip(axes[0], attacks, strict=True):
        part = curves.filter(pl.col("attack") == attack)
        for (run, method, trial_id), line in part.group_by(
            ["run", "method", "trial_id"], maintain_order=True
        ):
            epochs = line["epoch"].to_numpy()
            mean = np.maximum(line["fq_mean"].to_numpy(), floor)
            label = f"{method} ({trial_id}{', ' + str(run) if multi_run else ''})"
            ax.plot(epochs, mean, marker="o", color=colours[str(method)], label=label)
            std = line["fq_std"].fill_null(0.0).to_numpy()
            if std.any():
                ax.fill_between(
                    epochs, np.maximum(mean - std, floor), mean + std, color=colours[str(method)], alpha=0.2
                )
        seeds = int(part["seeds"].max() or 1)
        ax.set_title(
            f"{attack}-relearn" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""), fontsize=10
        )
        ax.set_yscale("log")
        ax.set_xlabel("relearning epoch (0 = unlearned)", fontsize=9)
        ax.set_ylabel("forget quality (log)", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Forget quality under relearning attacks (Fig. A3)")
    fig.tight_layout()
    return fig


def _empty_figure(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", color="grey")
    return fig


def history_figure(history: pl.DataFrame) -> Figure:
    """Optuna's optimisation history, one panel per objective: each finished trial's value by trial
    number (coloured by method) and the best value so far as a step line. A positive objective that
    spans more than two decades (forget quality) is drawn on a log axis.
    `history`: `analysis.search.history` rows."""
    if history.is_empty():
        return _empty_figure("no Optuna study found for these runs")
    objectives = list(dict.fromkeys(history["objective"].to_list()))
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.5 * len(objectives), 3.8), squeeze=False)
    colours = method_colours(sorted(set(history["method"].to_list())))
    multi_run = history["run"].n_unique() > 1
    for ax, objective in zip(axes[0], objectives, strict=True):
        part = history.filter(pl.col("objective") == objective)
        for (run, method), points in part.group_by(["run", "method"], maintain_order=True):
            label = f"{method}{' (' + str(run) + ')' if multi_run else ''}"
            ax.scatter(points["number"], points["value"], s=18, color=colours[str(method)], label=label)
        for _, line in part.group_by("run", maintain_order=True):
            ax.step(line["number"], line["best_so_far"], where="post", color="black", lw=1.2)
        values = part["value"].to_numpy()
        positive = values[values > 0]
        if positive.size == values.size and positive.size and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        direction = part["direction"][0]
        ax.set_title(f"{objective} ({direction}); line: best so far", fontsize=10)
        ax.set_xlabel("trial number (Optuna)", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Optimisation history per objective")
    fig.tight_layout()
    return fig


def importance_figure(importances: pl.DataFrame) -> Figure:
    """fANOVA hyperparameter importances: one panel per objective, a bar per (method, setting).
    `importances`: `analysis.search.importances` rows."""
    if importances.is_empty():
        return _empty_figure("too few finished trials per method for importances")
    objectives = list(dict.fromkeys(importances["objective"].to_list()))
    bars = importances.select("run", "method", "param").unique(maintain_order=True)
    height = max(2.5, 0.35 * bars.height + 1.2)
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.5 * len(objectives), height), squeeze=False)
    colours = method_colours(sorted(set(importances["method"].to_list())))
    multi_run = importances["run"].n_unique() > 1
    for ax, objective in zip(axes[0], objectives, strict=True):
        part = bars.join(
            importances.filter(pl.col("objective") == objective),
            on=["run", "method", "param"],
            how="left",
        ).with_columns(pl.col("importance").fill_null(0.0))
        labels = [
            f"{r['method']}: {r['param']}" + (f" ({r['run']})" if multi_run else "")
            for r in part.iter_rows(named=True)
        ]
        ax.barh(labels, part["importance"], color=[colours[m] for m in part["method"]])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{objective}", fontsize=10)
        ax.set_xlabel("importance (fANOVA, per method sums to 1)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Hyperparameter importance per objective")
    fig.tight_layout()
    return fig
