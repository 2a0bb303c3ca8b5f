"""The TOFU generator: determinism, the real files' schema, the split partition, the template design."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from raysimnpo.data.generators.tofu import (
    CONSTANT_POOLS,
    QUESTION_KINDS,
    SLOT_POOLS,
    TofuGeneratorConfig,
    answer_word_counts,
    build_tofu_splits,
    generate_author_qa,
    generate_tofu_dataset,
)

REPO = Path(__file__).resolve().parents[3]
REAL_TOFU = Path(os.environ.get("RAYSIMNPO_TOFU_DIR", REPO.parent / "shared" / "data" / "tofu"))
SMALL = TofuGeneratorConfig.preset("small")
DEFAULT = TofuGeneratorConfig()


@pytest.fixture(scope="module")
def default_splits() -> dict[str, list[dict]]:
    return build_tofu_splits(DEFAULT)


def _read_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_tofu_dataset(tmp_path / "a", SMALL)
    generate_tofu_dataset(tmp_path / "b", SMALL)
    a, b = _read_bytes(tmp_path / "a"), _read_bytes(tmp_path / "b")
    assert a == b
    assert sorted(a) == sorted(f"{name}.jsonl" for name in SMALL.split_names())
    assert len(a) == 18


def test_same_seed_is_identical_across_processes_with_another_hash_seed(tmp_path: Path) -> None:
    # Set iteration order depends on PYTHONHASHSEED; the generator must not depend on it.
    generate_tofu_dataset(tmp_path / "here", SMALL)
    code = (
        "import sys; from raysimnpo.data.generators.tofu import TofuGeneratorConfig, generate_tofu_dataset; "
        "generate_tofu_dataset(sys.argv[1], TofuGeneratorConfig.preset('small'))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True, env=env, timeout=120)
    assert _read_bytes(tmp_path / "here") == _read_bytes(tmp_path / "there")


def test_another_seed_gives_other_data() -> None:
    a = build_tofu_splits(SMALL)
    b = build_tofu_splits(TofuGeneratorConfig.preset("small", seed=1))
    assert a["full"] != b["full"]
    assert a["world_facts"] != b["world_facts"]


def test_default_sizes(default_splits: dict[str, list[dict]]) -> None:
    sizes = {name: len(rows) for name, rows in default_splits.items()}
    assert sizes == {
        "full": 1000,
        "forget01": 20, "retain99": 980, "forget01_perturbed": 20, "holdout01": 20,
        "forget05": 60, "retain95": 940, "forget05_perturbed": 60, "holdout05": 60,
        "forget10": 100, "retain90": 900, "forget10_perturbed": 100, "holdout10": 100,
        "retain_perturbed": 100,
        "real_authors": 50, "real_authors_perturbed": 50, "world_facts": 50, "world_facts_perturbed": 50,
    }  # fmt: skip


def _schema(rows: list[dict]) -> list[tuple[str, str]]:
    """Field names in order with their types (list lengths included), over every row."""
    schemas = set()
    for row in rows:
        schemas.add(
            tuple(
                (
                    k,
                    f"list[{len(v)}]:{','.join(sorted({type(x).__name__ for x in v}))}"
                    if isinstance(v, list)
                    else type(v).__name__,
                )
                for k, v in row.items()
            )
        )
    assert len(schemas) == 1, f"rows disagree on their schema: {schemas}"
    return list(schemas.pop())


@pytest.mark.skipif(not (REAL_TOFU / "full.jsonl").is_file(), reason=f"no real TOFU copy at {REAL_TOFU}")
def test_schema_equals_the_real_files(tmp_path: Path) -> None:
    generate_tofu_dataset(tmp_path, SMALL)
    real_names = sorted(p.stem for p in REAL_TOFU.glob("*.jsonl"))
    assert sorted(p.stem for p in tmp_path.glob("*.jsonl")) == real_names
    for name in real_names:
        real = [json.loads(line) for line in (REAL_TOFU / f"{name}.jsonl").read_text().splitlines()]
        ours = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert _schema(ours) == _schema(real), name


def test_perturbed_schema_without_the_real_files(default_splits: dict[str, list[dict]]) -> None:
    perturbed = ["question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"]
    for name in ("forget10_perturbed", "retain_perturbed"):
        assert [k for k, _ in _schema(default_splits[name])] == perturbed
        assert all(len(r["perturbed_answer"]) == 5 for r in default_splits[name])
    world = ["question", "option1", "option2", "option3", "option4", "answer"]
    for name in ("real_authors", "world_facts"):
        assert [k for k, _ in _schema(default_splits[name])] == world
        perturbed_rows = default_splits[f"{name}_perturbed"]
        assert [k for k, _ in _schema(perturbed_rows)] == ["question", "answer", "perturbed_answer"]
        for row, prow in zip(default_splits[name], perturbed_rows, strict=True):
            options = [row[f"option{i}"] for i in range(1, 5)]
            assert row["answer"] in options and len(set(options)) == 4
            assert prow["perturbed_answer"] == [o for o in options if o != row["answer"]]


def test_forget_retain_partition(default_splits: dict[str, list[dict]]) -> None:
    full = default_splits["full"]
    for forget, retain, authors in (
        ("forget01", "retain99", 1),
        ("forget05", "retain95", 3),
        ("forget10", "retain90", 5),
    ):
        assert default_splits[retain] + default_splits[forget] == full
        assert len(default_splits[forget]) == 20 * authors
        perturbed = default_splits[f"{forget}_perturbed"]
        assert [(r["question"], r["answer"]) for r in perturbed] == [
            (r["question"], r["answer"]) for r in default_splits[forget]
        ]
        holdout = default_splits[f"holdout{forget[-2:]}"]
        assert holdout == default_splits["holdout10"][: len(holdout)]
        assert len(holdout) == len(default_splits[forget])
    # The forget splits are the last authors: forget01's author is the last one.
    full_qa, holdout_qa = generate_author_qa(DEFAULT)
    assert {qa.author for qa in full_qa[-20:]} == {49}
    assert [(r["question"], r["answer"]) for r in default_splits["retain_perturbed"]] == [
        (r["question"], r["answer"]) for r in full[:100]
    ]
    # Holdout authors are new people, and the world QA is not part of `full`.
    full_questions = {r["question"] for r in full}
    assert not full_questions & {r["question"] for r in default_splits["holdout10"]}
    assert not full_questions & {
        r["question"] for r in default_splits["real_authors"] + default_splits["world_facts"]
    }
    holdout_names = {qa.question for qa in holdout_qa}
    assert len(holdout_names) == 100


def test_answer_lengths_are_spread(default_splits: dict[str, list[dict]]) -> None:
    words = answer_word_counts(default_splits["full"])
    assert min(words) <= 3
    assert max(words) >= 55
    assert sum(w <= 8 for w in words) / len(words) >= 0.3
    assert sum(w >= 30 for w in words) / len(words) >= 0.1
    forget_words = answer_word_counts(default_splits["forget10"])
    assert min(forget_words) <= 5 and max(forget_words) >= 40


def _slot_pattern(slot: str) -> str:
    """What a slot's value can look like: the alternatives of its pool, or a name / a quoted title."""
    pool = SLOT_POOLS[slot]
    if pool == "name":
        return r"[A-Z][a-z]+ [A-Z][a-z]+"
    if pool == "book":
        return r"The [A-Z][A-Za-z ]+?"
    return "|".join(re.escape(v) for v in sorted(CONSTANT_POOLS[pool], key=len, reverse=True))


def _phrasing_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile(
        "".join(
            f"(?P<{p[1:-1]}_{i}>{_slot_pattern(p[1:-1])})" if p.startswith("{") else re.escape(p)
            for i, p in enumerate(parts)
        )
        + "$"
    )


def _slot_values(template: str, text: str) -> dict[str, str]:
    match = _phrasing_regex(template).match(text)
    assert match is not None, (template, text)
    return {k.rsplit("_", 1)[0]: v for k, v in match.groupdict().items()}


def test_every_phrasing_of_a_kind_states_the_same_facts() -> None:
    for kind in QUESTION_KINDS:
        assert 2 <= len(kind.answers) <= 3 and len(kind.questions) == 2
        for template in kind.answers:
            slots = set(re.findall(r"\{(\w+)\}", template)) - {"name"}
            assert set(kind.facts) - {"name"} <= slots, (kind.name, template)
            assert all(s in SLOT_POOLS for s in slots), (kind.name, template)
    assert len(QUESTION_KINDS) >= DEFAULT.questions_per_author


def test_paraphrase_keeps_facts_and_perturbations_change_them() -> None:
    full_qa, _ = generate_author_qa(DEFAULT)
    kinds = {k.name: k for k in QUESTION_KINDS}
    for qa in full_qa:
        kind = kinds[qa.kind]
        assert qa.paraphrase_phrasing != qa.answer_phrasing
        answer = _slot_values(kind.answers[qa.answer_phrasing], qa.answer)
        paraphrase_template = kind.answers[qa.paraphrase_phrasing]
        paraphrase = _slot_values(paraphrase_template, qa.paraphrased_answer)
        assert {f: paraphrase[f] for f in kind.facts} == {f: answer[f] for f in kind.facts}
        assert len(set(qa.perturbed_answer)) == 5
        for wrong in qa.perturbed_answer:
            values = _slot_values(paraphrase_template, wrong)  # same phrasing as the paraphrase
            assert all(values[f] != paraphrase[f] for f in kind.facts), (qa.kind, wrong)


def test_paraphrase_phrasings_and_wrong_values_occur_in_the_retain_data() -> None:
    """DESIGN §4: the truth ratio must compare facts, not a template's novelty."""
    full_qa, _ = generate_author_qa(DEFAULT)
    retain, forget = full_qa[:900], full_qa[900:]
    trained = {(qa.kind, qa.answer_phrasing) for qa in retain}
    for qa in forget:
        assert (qa.kind, qa.paraphrase_phrasing) in trained, qa
    # Primary phrasings are balanced over the authors who have a kind.
    per_kind = Counter((qa.kind, qa.answer_phrasing) for qa in full_qa)
    for kind in QUESTION_KINDS:
        counts = [per_kind[(kind.name, p)] for p in range(len(kind.answers))]
        assert max(counts) - min(counts) <= 1, (kind.name, counts)
    # Wrong names are names of retained authors, so they occur in the retain answers.
    kinds = {k.name: k for k in QUESTION_KINDS}
    retain_text = " ".join(qa.answer for qa in retain)
    for qa in forget:
        if qa.kind == "name":
            for wrong in qa.perturbed_answer:
                name = _slot_values(kinds["name"].answers[qa.paraphrase_phrasing], wrong)["name"]
                assert name in retain_text


def test_small_preset_sizes() -> None:
    splits = build_tofu_splits(SMALL)
    assert len(splits["full"]) == 60
    assert len(splits["forget10"]) == len(splits["holdout10"]) == 6
    assert len(splits["retain_perturbed"]) == 12
    assert len(splits["real_authors"]) == len(splits["world_facts"]) == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"forget_fractions": {"forget1": 0.01}}, "not a forget split name"),
        ({"forget_fractions": {"forget10": 1.5}}, "must be in (0, 1)"),
        ({"n_holdout_authors": 2}, "n_holdout_authors (2) must be >= the largest forget split's authors (5)"),
        ({"n_authors": 6, "n_holdout_authors": 1}, "at least 6 must stay in every retain split"),
        (
            {"retain_perturbed_size": 901},
            "retain_perturbed_size (901) must be <= the rows of the smallest retain split (900)",
        ),
        ({"questions_per_author": 99}, "less than or equal to 25"),
        ({"seeds": 3}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        TofuGeneratorConfig(**overrides)
    assert message in str(info.value)


def test_forget_author_counts_round_half_up() -> None:
    config = TofuGeneratorConfig()
    assert [config.forget_authors(n) for n in ("forget01", "forget05", "forget10")] == [1, 3, 5]
    big = TofuGeneratorConfig(n_authors=200, n_holdout_authors=20, retain_perturbed_size=400)
    assert [big.forget_authors(n) for n in ("forget01", "forget05", "forget10")] == [2, 10, 20]  # real TOFU
