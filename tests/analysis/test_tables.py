"""analysis.tables over the fixture sweep: selection rule, Table 2 values, mean ± std, generations."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from raysimnpo.analysis import tables
from raysimnpo.analysis.load import Results, load_runs

Loaded = tuple[Results, pl.DataFrame]


@pytest.fixture(scope="module")
def loaded(demo_run: Path) -> Loaded:
    res = load_runs([str(demo_run)])
    return res, tables.select_configurations(res)


def test_selection_rule_picks_the_documented_trials(loaded: Loaded) -> None:
    _, selection = loaded
    rows = {r["method"]: r for r in selection.iter_rows(named=True)}
    # Retrain MU 0.60 -> threshold 0.55. simnpo: the beta-2.5 configuration (mean MU .58) qualifies;
    # simnpo-hi has the higher FQ (.90) but MU .30. Representative seed: higher FQ -> simnpo-s1.
    assert rows["simnpo"]["trial_id"] == "simnpo-s1"
    assert rows["simnpo"]["trial_ids"] == ["simnpo-s0", "simnpo-s1"]
    assert rows["simnpo"]["seeds"] == [0, 1]
    assert rows["simnpo"]["forget_quality"] == pytest.approx(0.70)
    assert rows["simnpo"]["threshold"] == pytest.approx(0.55)
    assert rows["simnpo"]["reason"].startswith("highest FQ")
    # npo: no trial reaches MU .55 -> fallback: highest MU = npo-c (.53), not npo-b (highest FQ .50).
    assert rows["npo"]["trial_id"] == "npo-c"
    assert rows["npo"]["reason"].startswith("highest MU")


def test_mean_and_std_over_two_seeds(loaded: Loaded) -> None:
    res, selection = loaded
    table = tables.paper_table(res, selection)
    simnpo = table.filter(table["row"] == "simnpo").row(0, named=True)
    # seeds: FQ .60/.80, 1 − ROUGE-L .70/.74, retain Prob .80/.84; sample std of (x, y) = |x − y| / √2
    assert simnpo["forget_quality"] == pytest.approx(0.70)
    assert simnpo["forget_quality_std"] == pytest.approx(0.2 / 2**0.5)
    assert simnpo["forget_one_minus_rouge"] == pytest.approx(0.72)
    assert simnpo["forget_one_minus_rouge_std"] == pytest.approx(0.04 / 2**0.5)
    assert simnpo["retain_prob"] == pytest.approx(0.82)
    npo = table.filter(table["row"] == "npo").row(0, named=True)
    assert npo["forget_quality_std"] is None
    assert table["row"].to_list() == ["Original", "Retrain", "npo", "simnpo"]


def test_table_markdown_rows(loaded: Loaded) -> None:
    res, selection = loaded
    text = tables.table_markdown(tables.paper_table(res, selection))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith(
        "| Method | Forget Set 1-ROUGE-L ↑ | Forget Set 1-Prob. ↑ | Forget Set Truth ratio ↑ | FQ ↑"
    )
    # Original: 1 − .96, 1 − .99, .49, FQ .001 in scientific notation; retain Prob .98; MU .62
    assert lines[1] == (
        "| Original | 0.04 | 0.01 | 0.49 | 1.00e-03 | 0.62 | 0.62 | 0.62 | 0.62 | 0.62 | 0.62 | 0.62 | 0.98 "
        "| 0.62 | 0.62 | original | 0 |  |"
    )
    assert lines[2].startswith("| Retrain | 0.61 | 0.85 | 0.66 | 1.00 |")
    assert lines[3].startswith("| npo | 0.50 | 0.80 | 0.60 | 0.05 | 0.53 |")
    assert lines[3].endswith("| npo-c | 0 | β=1, γ=0, lr=1e-05, epochs=3 |")
    # simnpo: mean ± std over seeds 0, 1; best FQ and MU among the methods in bold
    assert lines[4].startswith(
        "| simnpo | 0.72 ± 0.03 | 0.96 ± 0.01 | 0.68 ± 0.03 | **0.70 ± 0.14** | 0.58 ± 0.01 |"
    )
    assert "| 0.82 ± 0.03 | 0.58 ± 0.01 | **0.58 ± 0.01** | simnpo-s1 | 0, 1 | β=2.5" in lines[4]
    assert "MU ≥ MU(Retrain) − 0.05" in text


def test_repetition_fraction_by_hand() -> None:
    # 8 words -> 6 word 3-grams, 2 distinct -> 1 − 2/6
    assert tables.repetition_fraction("The author the author the author the author") == pytest.approx(2 / 3)
    assert tables.repetition_fraction("a b c d e") == 0.0
    assert tables.repetition_fraction("too short") == 0.0
    assert tables.repetition_fraction(None) == 0.0
    assert not tables.is_repetitive("a b c a b c d e f g")  # 8 3-grams, 7 distinct -> 0.125


def test_generation_examples_fixed_sample(loaded: Loaded) -> None:
    res, selection = loaded
    first = tables.generation_examples(res, selection, count=8, seed=0)
    again = tables.generation_examples(res, selection, count=8, seed=0)
    assert [e.index for e in first] == [e.index for e in again]
    # Retrain has no answer to question 9, and 9 questions are answered by every model: 9 is never drawn.
    assert len(first) == 8 and 9 not in [e.index for e in first]
    example = first[0]
    assert [a.model for a in example.answers] == ["Original", "Retrain", "npo (npo-c)", "simnpo (simnpo-s1)"]
    assert example.answer == f"Answer number {example.index} is the true one."
    text = tables.generations_markdown(first)
    assert "| npo (npo-c) | the author the author the author the author | yes (0.67) |" in text
    assert f"| Retrain | I am not sure about item {example.index}. | no |" in text
