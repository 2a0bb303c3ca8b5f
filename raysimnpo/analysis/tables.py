"""The paper-style tables: Table 2 of the SimNPO paper (TOFU overview) and Table A4 (generations).

Selection rule (one configuration per method and run; the row that method gets in Table 2):

1. Trials are grouped into configurations: the same method and the same params_json apart from any
   "seed" entry. A configuration's FQ and MU are the means over its completed trials (its seeds).
2. Among the method's configurations with mean MU ≥ MU(Retrain) − 0.05 (utility within 0.05 of the
   gold standard), the one with the highest mean FQ is selected (ties: higher MU, then trial id).
3. If no configuration qualifies (or the run has no Retrain row), the one with the highest mean MU is
   selected instead (ties: higher FQ, then trial id).

The selected configuration's table values are mean ± sample std over its seeds. Its representative
trial (whose checkpoint `--export-best` copies and whose greedy answers `generations.md` shows) is
chosen among its seeds by the same rule.

Table 2 columns (DESIGN §6; ↑ = higher is better): forget set 1−ROUGE-L, 1−Prob., truth ratio; FQ;
then ROUGE-L, Prob., truth ratio on Real Authors, World Facts and the Retain set; MU. Values come from
the `metrics` table, stage "final".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .load import (
    FORGET_QUALITY,
    MODEL_UTILITY,
    REFERENCE_KINDS,
    REFERENCE_LABELS,
    Results,
    completed_trials,
    final_metrics,
    retrain_utility,
)

MU_TOLERANCE = 0.05
REPETITION_THRESHOLD = 0.3
SELECTION_RULE = (
    "Per method, trials with the same hyperparameters apart from the seed form one configuration "
    "(FQ and MU averaged over its seeds); selected is the configuration with the highest FQ among "
    f"those with MU ≥ MU(Retrain) − {MU_TOLERANCE}, or, if none qualifies, the one with the highest MU. "
    "Values are mean ± sample std over the selected configuration's seeds."
)


@dataclass(frozen=True)
class Column:
    """One Table 2 column: its header group and name, the csv key, the metric, and 1−x or not."""

    group: str
    name: str
    key: str
    metric: str
    one_minus: bool = False


TABLE_COLUMNS: tuple[Column, ...] = (
    Column("Forget Set", "1-ROUGE-L ↑", "forget_one_minus_rouge", "forget_rouge", one_minus=True),
    Column("Forget Set", "1-Prob. ↑", "forget_one_minus_prob", "forget_prob", one_minus=True),
    Column("Forget Set", "Truth ratio ↑", "forget_truth_ratio", "forget_truth_ratio"),
    Column("", "FQ ↑", "forget_quality", FORGET_QUALITY),
    *(
        Column(title, name, f"{split}_{suffix}", f"{split}_{suffix}")
        for split, title in (
            ("real_authors", "Real Authors"),
            ("world_facts", "World Facts"),
            ("retain", "Retain Set"),
        )
        for name, suffix in (("ROUGE-L ↑", "rouge"), ("Prob. ↑", "prob"), ("Truth ratio ↑", "truth_ratio"))
    ),
    Column("", "MU ↑", "model_utility", MODEL_UTILITY),
)
TABLE_METRICS = tuple(c.metric for c in TABLE_COLUMNS)
HYPERPARAMETERS = (
    ("beta", "β"),
    ("gamma", "γ"),
    ("retain_weight", "λ"),
    ("alpha", "α"),
    ("learning_rate", "lr"),
    ("epochs", "epochs"),
)


# --------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------


def _pick(frame: pl.DataFrame, fq: str, mu: str, threshold: float | None) -> tuple[pl.DataFrame, str]:
    """The row chosen by the selection rule among `frame`'s rows (columns fq, mu, trial_id)."""
    if threshold is not None:
        qualified = frame.filter(pl.col(mu) >= threshold)
        if not qualified.is_empty():
            best = qualified.sort([fq, mu, "trial_id"], descending=[True, True, False]).head(1)
            return best, f"highest FQ with MU ≥ {threshold:.3g}"
    best = frame.sort([mu, fq, "trial_id"], descending=[True, True, False]).head(1)
    if threshold is None:
        return best, "highest MU (no Retrain MU)"
    return best, f"highest MU (none with MU ≥ {threshold:.3g})"


def select_configurations(res: Results, tolerance: float = MU_TOLERANCE) -> pl.DataFrame:
    """One row per (run, method): the configuration picked by the selection rule (module docstring).

    Columns: run, method, config, trial_id (the representative trial), trial_ids (all seeds' trials,
    sorted), seeds, forget_quality and model_utility (means over seeds), threshold, reason.
    """
    points = completed_trials(res)
    retrain = retrain_utility(res)
    configs = points.group_by(["run", "method", "config"]).agg(
        pl.col(FORGET_QUALITY).mean(),
        pl.col(MODEL_UTILITY).mean(),
        pl.col("trial_id").min(),  # a stable tie-breaker for configurations
    )
    rows = []
    for (run, method), group in configs.sort("run", "method").group_by(
        ["run", "method"], maintain_order=True
    ):
        mu_retrain = retrain.get(str(run))
        threshold = None if mu_retrain is None else mu_retrain - tolerance
        best, reason = _pick(group, FORGET_QUALITY, MODEL_UTILITY, threshold)
        config = best["config"][0]
        seeds = points.filter(
            (pl.col("run") == run) & (pl.col("method") == method) & (pl.col("config") == config)
        )
        representative, _ = _pick(seeds, FORGET_QUALITY, MODEL_UTILITY, threshold)
        rows.append(
            {
                "run": run,
                "method": method,
                "config": config,
                "trial_id": representative["trial_id"][0],
                "trial_ids": sorted(seeds["trial_id"].to_list()),
                "seeds": sorted(seeds["seed"].to_list()),
                FORGET_QUALITY: best[FORGET_QUALITY][0],
                MODEL_UTILITY: best[MODEL_UTILITY][0],
                "threshold": threshold,
                "reason": reason,
            }
        )
    schema: dict[str, pl.DataType] = {
        "run": pl.String(),
        "method": pl.String(),
        "config": pl.String(),
        "trial_id": pl.String(),
        "trial_ids": pl.List(pl.String),
        "seeds": pl.List(pl.Int64),
        FORGET_QUALITY: pl.Float64(),
        MODEL_UTILITY: pl.Float64(),
        "threshold": pl.Float64(),
        "reason": pl.String(),
    }
    return pl.DataFrame(rows, schema=schema)


# --------------------------------------------------------------------------------------------------
# Table 2
# --------------------------------------------------------------------------------------------------


def _column_values(frame: pl.DataFrame) -> pl.DataFrame:
    """The table's column values (1−x applied) per row of a final-metrics frame, keyed by column key."""
    return frame.select(
        "run",
        "trial_id",
        *((1.0 - pl.col(c.metric) if c.one_minus else pl.col(c.metric)).alias(c.key) for c in TABLE_COLUMNS),
    )


def _hyperparameters(trials: pl.DataFrame) -> str:
    row = trials.row(0, named=True)
    parts = [f"{label}={row[name]:.3g}" for name, label in HYPERPARAMETERS if row.get(name) is not None]
    return ", ".join(parts)


def paper_table(res: Results, selection: pl.DataFrame) -> pl.DataFrame:
    """Table 2 as a frame: per run the rows Original, Retrain, then each method's selected
    configuration. Columns: run, row, trial_id, trial_ids, seeds, hyperparameters, reason, and for every
    Table 2 column its key (mean) and key + "_std" (sample std over seeds; null for a single seed)."""
    values = _column_values(final_metrics(res, TABLE_METRICS))
    trials = res.trials
    out = []
    for run in res.labels:
        for kind in REFERENCE_KINDS:
            ref = trials.filter((pl.col("run") == run) & (pl.col("kind") == kind))
            if ref.is_empty():
                continue
            trial_id = ref["trial_id"][0]
            row = values.filter((pl.col("run") == run) & (pl.col("trial_id") == trial_id))
            entry = {
                "run": run,
                "row": REFERENCE_LABELS[kind],
                "trial_id": trial_id,
                "trial_ids": trial_id,
                "seeds": str(ref["seed"][0]),
                "hyperparameters": "",
                "reason": kind,
            }
            for c in TABLE_COLUMNS:
                entry[c.key] = row[c.key][0] if row.height else None
                entry[f"{c.key}_std"] = None
            out.append(entry)
        for chosen in selection.filter(pl.col("run") == run).iter_rows(named=True):
            rows = values.filter((pl.col("run") == run) & pl.col("trial_id").is_in(chosen["trial_ids"]))
            config_trials = trials.filter((pl.col("run") == run) & (pl.col("trial_id") == chosen["trial_id"]))
            entry = {
                "run": run,
                "row": chosen["method"],
                "trial_id": chosen["trial_id"],
                "trial_ids": ", ".join(chosen["trial_ids"]),
                "seeds": ", ".join(str(s) for s in chosen["seeds"]),
                "hyperparameters": _hyperparameters(config_trials),
                "reason": chosen["reason"],
            }
            for c in TABLE_COLUMNS:
                column = rows[c.key].drop_nulls().drop_nans()
                entry[c.key] = column.mean() if column.len() else None
                entry[f"{c.key}_std"] = column.std(ddof=1) if column.len() > 1 else None
            out.append(entry)
    schema: dict[str, pl.DataType] = {
        "run": pl.String(),
        "row": pl.String(),
        "trial_id": pl.String(),
        "trial_ids": pl.String(),
        "seeds": pl.String(),
        "hyperparameters": pl.String(),
        "reason": pl.String(),
    }
    for c in TABLE_COLUMNS:
        schema[c.key] = pl.Float64()
        schema[f"{c.key}_std"] = pl.Float64()
    return pl.DataFrame(out, schema=schema)


def format_value(value: float | None, fq: bool = False) -> str:
    """Two decimals as in the paper; FQ below 0.01 in scientific notation (1.87e-09); "–" if missing."""
    if value is None or not math.isfinite(value):
        return "–"
    if fq and value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.2f}"


def format_cell(mean: float | None, std: float | None, fq: bool = False) -> str:
    """ "mean ± std" when a std is given (several seeds), else the value alone."""
    text = format_value(mean, fq)
    if std is not None and math.isfinite(std) and text != "–":
        text += f" ± {format_value(std, fq)}"
    return text


@dataclass
class TextTable:
    """A table ready to print as Markdown or HTML: caption, headers, string cells, bold cells."""

    caption: str
    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    title: str = ""


def table_caption(run: str) -> str:
    return (
        f"Table 2 layout (SimNPO paper) for run `{run}`: TOFU unlearning efficacy and utility "
        f"preservation; ↑ = higher is better, FQ = forget quality (KS-test p-value against Retrain), "
        f"MU = model utility (harmonic mean of the nine utility numbers). Selection: {SELECTION_RULE} "
        "The best FQ and MU among the methods are in bold."
    )


def paper_text_tables(table: pl.DataFrame) -> list[TextTable]:
    """One TextTable per run in the paper's column order, with Trial, Seeds and Hyperparameters last."""
    out = []
    headers = ["Method"]
    headers += [f"{c.group} {c.name}".strip() for c in TABLE_COLUMNS]
    headers += ["Trial", "Seeds", "Hyperparameters"]
    for (run,), part in table.group_by(["run"], maintain_order=True):
        rows, bold = [], set()
        records = part.to_dicts()
        methods = [i for i, r in enumerate(records) if r["reason"] not in REFERENCE_KINDS]
        best: dict[str, int] = {}
        for key in (FORGET_QUALITY, MODEL_UTILITY):
            scored = [(records[i][key], i) for i in methods if records[i][key] is not None]
            if scored:
                best[key] = max(scored)[1]
        for i, record in enumerate(records):
            cells = [record["row"]]
            for j, c in enumerate(TABLE_COLUMNS, start=1):
                cells.append(format_cell(record[c.key], record[f"{c.key}_std"], fq=c.key == FORGET_QUALITY))
                if best.get(c.key) == i:
                    bold.add((i, j))
            cells += [record["trial_id"], record["seeds"], record["hyperparameters"]]
            rows.append(cells)
        out.append(TextTable(table_caption(str(run)), headers, rows, bold, title=str(run)))
    return out


# --------------------------------------------------------------------------------------------------
# Markdown / HTML rendering of TextTables
# --------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def markdown_table(table: TextTable) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join(["---"] * len(table.headers)) + "|")
    for i, row in enumerate(table.rows):
        cells = [
            f"**{_md_cell(c)}**" if (i, j) in table.bold and c else _md_cell(c) for j, c in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(table: TextTable) -> str:
    import html

    parts = ["<table>", f"<caption>{html.escape(table.caption)}</caption>", "<thead><tr>"]
    parts += [f"<th>{html.escape(h)}</th>" for h in table.headers]
    parts.append("</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = []
        for j, c in enumerate(row):
            text = html.escape(c).replace("\n", "<br>")
            cells.append(f"<td><b>{text}</b></td>" if (i, j) in table.bold else f"<td>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def table_markdown(table: pl.DataFrame) -> str:
    """table.md: per run a heading, the caption, and the Table 2 rows."""
    sections = ["# TOFU results (Table 2 layout)", ""]
    for text in paper_text_tables(table):
        sections += [f"## Run `{text.title}`", "", text.caption, "", markdown_table(text), ""]
    return "\n".join(sections)


def hypervolume_text_table(hv: pl.DataFrame) -> TextTable:
    caption = (
        "Hypervolume of each method's (FQ, MU) points: the area they dominate above the reference point "
        "(FQ = 0, MU = 0), FQ on its natural scale, so 1 is the maximum."
    )
    rows = [
        [r["run"], r["method"], str(r["trials"]), str(r["front_size"]), f"{r['hypervolume']:.4f}"]
        for r in hv.iter_rows(named=True)
    ]
    return TextTable(caption, ["Run", "Method", "Trials", "Front size", "Hypervolume"], rows)


# --------------------------------------------------------------------------------------------------
# Generations (Table A4)
# --------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def repetition_fraction(text: str | None, n: int = 3) -> float:
    """Fraction of the word n-grams of `text` that repeat an earlier one: 1 − distinct/total (0 if
    the text has fewer than n words). Degenerate unlearned models loop ("the the the ..."; paper
    Table A4), which drives it towards 1."""
    words = _WORD.findall((text or "").lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_repetitive(text: str | None, threshold: float = REPETITION_THRESHOLD) -> bool:
    return repetition_fraction(text) > threshold


@dataclass(frozen=True)
class Answer:
    model: str
    trial_id: str
    text: str | None
    repetition: float


@dataclass(frozen=True)
class GenerationExample:
    run: str
    index: int
    question: str
    answer: str
    answers: tuple[Answer, ...]


def _shown_models(res: Results, selection: pl.DataFrame, run: str) -> list[tuple[str, str]]:
    trials = res.trials.filter(pl.col("run") == run)
    models = []
    for kind in REFERENCE_KINDS:
        ref = trials.filter(pl.col("kind") == kind)
        if not ref.is_empty():
            models.append((REFERENCE_LABELS[kind], ref["trial_id"][0]))
    for chosen in selection.filter(pl.col("run") == run).iter_rows(named=True):
        models.append((f"{chosen['method']} ({chosen['trial_id']})", chosen["trial_id"]))
    return models


def generation_examples(
    res: Results, selection: pl.DataFrame, count: int = 8, seed: int = 0, split: str = "forget"
) -> list[GenerationExample]:
    """A fixed random sample (numpy default_rng(seed)) of `count` questions of `split` per run, with the
    true answer and the greedy answers of Original, Retrain and each method's selected trial.

    Questions are drawn from those that every shown model answered (non-null `generation`); if fewer
    than `count` are, from those that at least one answered.
    """
    out = []
    for run in res.labels:
        models = _shown_models(res, selection, run)
        ids = [trial_id for _, trial_id in models]
        examples = res.examples.filter(
            (pl.col("run") == run) & (pl.col("split") == split) & pl.col("trial_id").is_in(ids)
        )
        answered = examples.filter(pl.col("generation").is_not_null())
        per_index = answered.group_by("index").agg(pl.col("trial_id").n_unique().alias("n"))
        everyone = sorted(per_index.filter(pl.col("n") == len(set(ids)))["index"].to_list())
        anyone = sorted(per_index["index"].to_list())
        pool = everyone if len(everyone) >= count else anyone
        if not pool:
            continue
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False))
        for index in chosen:
            rows = examples.filter(pl.col("index") == index)
            first = rows.row(0, named=True)
            answers = []
            for model, trial_id in models:
                mine = rows.filter(pl.col("trial_id") == trial_id)
                text = mine["generation"][0] if mine.height else None
                answers.append(Answer(model, trial_id, text, repetition_fraction(text)))
            out.append(GenerationExample(run, index, first["question"], first["answer"], tuple(answers)))
    return out


def generations_text_tables(examples: Sequence[GenerationExample]) -> list[TextTable]:
    tables = []
    for number, example in enumerate(examples, start=1):
        rows = [["Ground truth", example.answer, ""]]
        for answer in example.answers:
            flag = f"yes ({answer.repetition:.2f})" if answer.repetition > REPETITION_THRESHOLD else "no"
            rows.append([answer.model, answer.text if answer.text is not None else "–", flag])
        title = f"Q{number} (run `{example.run}`, question #{example.index}): {example.question}"
        tables.append(TextTable("", ["Model", "Answer", "Repetitive"], rows, title=title))
    return tables


def generations_markdown(examples: Sequence[GenerationExample]) -> str:
    """generations.md: per sampled question, the true answer and each model's greedy answer with a
    repetition flag (fraction of repeated word 3-grams > 0.3), like the paper's Table A4."""
    lines = [
        "# Generation examples (Table A4 layout)",
        "",
        "Greedy answers to a fixed random sample of forget-set questions. Repetitive: the fraction of "
        f"repeated word 3-grams exceeds {REPETITION_THRESHOLD} (value in brackets).",
        "",
    ]
    if not examples:
        lines.append("No generations were recorded for the forget set.")
    for table in generations_text_tables(examples):
        lines += [f"## {_md_cell(table.title)}", "", markdown_table(table), ""]
    return "\n".join(lines)
