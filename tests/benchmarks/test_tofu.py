"""The TOFU benchmark definition: pairings, evaluation sets, and loading a run's splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raysimnpo.benchmarks.tofu import (
    DEFAULT_OBJECTIVES,
    FORGET_SPLITS,
    ForgetPairing,
    eval_split_specs,
    load_tofu_run_data,
    pairing,
    required_splits,
)
from raysimnpo.data.generators.tofu import TofuGeneratorConfig, generate_tofu_dataset
from raysimnpo.data.sources import TofuSource
from raysimnpo.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
REAL_TOFU = Path(os.environ.get("RAYSIMNPO_TOFU_DIR", REPO.parent / "shared" / "data" / "tofu"))
SMALL = TofuGeneratorConfig.preset("small")


def test_pairings() -> None:
    assert FORGET_SPLITS == ("forget01", "forget05", "forget10")
    assert pairing("forget01") == ForgetPairing("forget01", "retain99", "forget01_perturbed", "holdout01")
    assert pairing("forget05") == ForgetPairing("forget05", "retain95", "forget05_perturbed", "holdout05")
    assert pairing("forget10") == ForgetPairing("forget10", "retain90", "forget10_perturbed", "holdout10")
    assert DEFAULT_OBJECTIVES == (("forget_quality", "max"), ("model_utility", "max"))


def test_eval_split_specs() -> None:
    specs = eval_split_specs("forget05")
    assert [(s.name, s.split, s.reference_field, s.choice_prob, s.n_perturbed) for s in specs] == [
        ("forget", "forget05_perturbed", "paraphrased_answer", False, 5),
        ("retain", "retain_perturbed", "paraphrased_answer", False, 5),
        ("real_authors", "real_authors_perturbed", "answer", True, 3),
        ("world_facts", "world_facts_perturbed", "answer", True, 3),
    ]
    assert required_splits("forget10") == (
        "full", "forget10", "retain90", "holdout10",
        "forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed",
    )  # fmt: skip


def test_load_generated_run_data(tmp_path: Path) -> None:
    data = load_tofu_run_data(TofuSource(kind="generated", generator=SMALL), "forget10", tmp_path)
    assert data.forget_split == "forget10"
    assert (len(data.full), len(data.forget), len(data.retain), len(data.holdout)) == (60, 6, 54, 6)
    assert data.retain + data.forget == data.full
    assert [(s.name, len(s.rows)) for s in data.eval_splits] == [
        ("forget", 6), ("retain", 12), ("real_authors", 8), ("world_facts", 8),
    ]  # fmt: skip
    assert [r["question"] for r in data.eval_split("forget").rows] == [r["question"] for r in data.forget]
    assert len(data.utility_train_rows) == 16
    assert set(data.utility_train_rows[0]) == {"question", "answer"}
    corpus = data.corpus()
    assert len(corpus) == len(set(corpus))
    assert data.eval_split("forget").rows[0]["perturbed_answer"][4] in corpus
    assert data.eval_split("world_facts").rows[0]["perturbed_answer"][0] in corpus
    assert (
        corpus
        == load_tofu_run_data(TofuSource(kind="generated", generator=SMALL), "forget10", tmp_path).corpus()
    )


@pytest.mark.parametrize("bad", ["forget20", "retain90", "Forget10"])
def test_bad_forget_split_lists_the_allowed_ones(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserInputError) as info:
        load_tofu_run_data(TofuSource(kind="generated", generator=SMALL), bad, tmp_path)
    message = str(info.value)
    assert message.startswith(f"data.forget_split: {bad!r} is not a forget split of generated dataset")
    assert message.endswith("allowed: forget01, forget05, forget10")
    with pytest.raises(
        UserInputError,
        match=f"'{bad}' is not a forget split of hub dataset locuslab/TOFU; allowed: "
        "forget01, forget05, forget10",
    ):
        load_tofu_run_data(TofuSource(kind="hub"), bad)


def test_a_generated_source_offers_its_configured_forget_splits(tmp_path: Path) -> None:
    config = TofuGeneratorConfig(
        **{**SMALL.model_dump(), "forget_fractions": {"forget20": 0.2}, "n_holdout_authors": 2}
    )
    data = load_tofu_run_data(TofuSource(kind="generated", generator=config), "forget20", tmp_path)
    assert data.pairing.retain == "retain80"
    assert (len(data.forget), len(data.retain)) == (12, 48)
    with pytest.raises(UserInputError, match="allowed: forget20$"):
        load_tofu_run_data(TofuSource(kind="generated", generator=config), "forget10", tmp_path)


def test_forget_and_forget_perturbed_must_match(tmp_path: Path) -> None:
    generate_tofu_dataset(tmp_path, SMALL)
    path = tmp_path / "forget10_perturbed.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["question"] = "Something else?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        UserInputError, match="forget10_perturbed: row 3 asks 'Something else\\?' but forget10 row 3"
    ):
        load_tofu_run_data(TofuSource(kind="local", path=str(tmp_path)), "forget10")


@pytest.mark.skipif(not (REAL_TOFU / "full.jsonl").is_file(), reason=f"no real TOFU copy at {REAL_TOFU}")
def test_real_tofu_run_data() -> None:
    data = load_tofu_run_data(TofuSource(kind="local", path=str(REAL_TOFU)), "forget05")
    assert (len(data.full), len(data.forget), len(data.retain), len(data.holdout)) == (4000, 200, 3800, 200)
    assert [(s.name, len(s.rows)) for s in data.eval_splits] == [
        ("forget", 200), ("retain", 400), ("real_authors", 100), ("world_facts", 117),
    ]  # fmt: skip
    assert len(data.utility_train_rows) == 217
