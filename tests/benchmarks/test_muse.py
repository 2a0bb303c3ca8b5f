"""MUSE: the generator's layout, the local and hub loaders against small fixtures in the hub layout,
bad rows, and the evaluation on a tiny model."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raysimnpo.benchmarks import muse
from raysimnpo.data.generators.muse import (
    MUSE_FIELDS,
    MUSE_LAYOUT,
    MuseGeneratorConfig,
    build_muse_splits,
    generate_muse_dataset,
)
from raysimnpo.errors import UserInputError
from raysimnpo.models import TinyModelConfig, build_tiny_model, build_tiny_tokenizer

SMALL = MuseGeneratorConfig(seed=3, forget_articles=4, retain_articles=4, holdout_articles=4, icl_shots=1)

FIXTURE: dict[str, dict[str, list[dict[str, Any]]]] = {
    "raw": {
        "forget": [{"text": "Quenby, May 2020. The Quenby Arts Trust approved a museum."}],
        "retain1": [{"text": "Harlow, June 2021. The Harlow Water Board approved a bridge."}],
        "retain2": [{"text": "Velmar, July 2022. The Velmar School Board approved a library."}],
        "holdout": [{"text": "Dornby, March 2023. The Dornby Health Office approved a pool."}],
    },
    "verbmem": {
        "forget": [{"prompt": "Quenby, May 2020.", "gt": "The Quenby Arts Trust approved a museum."}]
    },
    "knowmem": {
        "forget_qa": [{"question": "What did the Quenby Arts Trust approve?", "answer": "a museum"}],
        "retain_qa": [{"question": "What did the Velmar School Board approve?", "answer": "a library"}],
        "forget_qa_icl": [{"question": "When did Quenby approve it?", "answer": "May 2020"}],
        "retain_qa_icl": [{"question": "When did Velmar approve it?", "answer": "July 2022"}],
    },
    "privleak": {
        "forget": [{"text": "Quenby, May 2020. The Quenby Arts Trust approved a museum."}],
        "retain": [{"text": "Velmar, July 2022. The Velmar School Board approved a library."}],
        "holdout": [{"text": "Dornby, March 2023. The Dornby Health Office approved a pool."}],
    },
}


def write_fixture(folder: Path, data: dict[str, dict[str, list[dict[str, Any]]]] = FIXTURE) -> Path:
    for config, splits in data.items():
        for split, rows in splits.items():
            (folder / config).mkdir(parents=True, exist_ok=True)
            (folder / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_generator_writes_every_config_split_and_field(tmp_path: Path) -> None:
    paths = generate_muse_dataset(tmp_path, SMALL)
    assert {(p.parent.name, p.stem) for p in paths} == {(c, s) for c, ss in MUSE_LAYOUT.items() for s in ss}
    splits = build_muse_splits(SMALL)
    for config, by_split in splits.items():
        for rows in by_split.values():
            assert rows and all(set(r) == set(MUSE_FIELDS[config]) for r in rows)
    assert [len(splits["raw"][s]) for s in ("forget", "retain1", "retain2", "holdout")] == [4, 4, 4, 4]
    # verbmem: prompt + " " + gt is the body of each forget article, which opens the article text.
    for row, raw in zip(splits["verbmem"]["forget"], splits["raw"]["forget"], strict=True):
        assert raw["text"].startswith(row["prompt"] + " " + row["gt"])
    # The QA answers are in their articles; the ICL questions are not evaluated.
    forget_text = " ".join(r["text"] for r in splits["raw"]["forget"])
    assert all(r["answer"] in forget_text for r in splits["knowmem"]["forget_qa"])
    icl = {r["question"] for r in splits["knowmem"]["forget_qa_icl"]}
    assert len(icl) == 1 and not icl & {r["question"] for r in splits["knowmem"]["forget_qa"]}
    # Articles are about distinct towns: no article is shared between splits.
    texts = [r["text"] for s in splits["raw"].values() for r in s]
    assert len(set(texts)) == len(texts)
    assert build_muse_splits(SMALL) == splits  # same seed, same data
    assert build_muse_splits(SMALL.model_copy(update={"seed": 4})) != splits


def test_local_folder_in_the_hub_layout(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path / "muse")
    settings = muse.MuseSettings(source=muse.MuseSource(kind="local", path=str(folder)))
    data = muse.load_muse_run_data(settings, tmp_path / "cache")
    assert data.raw["forget"] == [FIXTURE["raw"]["forget"][0]["text"]]
    assert data.training_texts("original") == [
        FIXTURE["raw"][s][0]["text"] for s in ("forget", "retain1", "retain2")
    ]
    assert data.training_texts("retrain") == [FIXTURE["raw"][s][0]["text"] for s in ("retain1", "retain2")]
    assert data.training_texts("retain") == [FIXTURE["raw"]["retain1"][0]["text"]]
    assert data.knowmem["retain_qa"][0]["answer"] == "a library"
    assert data.privleak["holdout"] == [FIXTURE["privleak"]["holdout"][0]["text"]]


def test_hub_loader_asks_for_the_published_ids_configs_and_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    calls: list[tuple[str, str, str]] = []

    def fake_load_dataset(hub_id: str, config: str, split: str) -> list[dict[str, Any]]:
        calls.append((hub_id, config, split))
        return FIXTURE[config][split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    settings = muse.MuseSettings(corpus="books", source=muse.MuseSource(kind="hub"))
    data = muse.load_muse_run_data(settings, tmp_path)
    assert data.verbmem == FIXTURE["verbmem"]["forget"]
    assert {c[0] for c in calls} == {"muse-bench/MUSE-Books"}
    assert {(c[1], c[2]) for c in calls} == {
        ("raw", "forget"), ("raw", "retain1"), ("raw", "retain2"), ("raw", "holdout"), ("verbmem", "forget"),
        ("knowmem", "forget_qa"), ("knowmem", "retain_qa"), ("knowmem", "forget_qa_icl"),
        ("knowmem", "retain_qa_icl"), ("privleak", "forget"), ("privleak", "holdout"),
    }  # fmt: skip

    def offline(*_: Any, **__: Any) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserInputError, match="cannot load muse-bench/MUSE-News:raw:forget"):
        muse.load_muse_run_data(muse.MuseSettings(source=muse.MuseSource(kind="hub")), tmp_path)


@pytest.mark.parametrize(
    ("config", "split", "rows", "expected"),
    [
        ("verbmem", "forget", [{"prompt": "p"}], "row 1: missing field 'gt'"),
        ("knowmem", "forget_qa", [{"question": "q", "answer": 3}], "field 'answer' must be str"),
        ("raw", "holdout", [], "no rows"),
        ("privleak", "forget", [{"text": ""}], "field 'text' is empty"),
    ],
)
def test_bad_rows_name_the_file(tmp_path: Path, config: str, split: str, rows: list, expected: str) -> None:
    data = json.loads(json.dumps(FIXTURE))
    data[config][split] = rows
    folder = write_fixture(tmp_path / "bad", data)
    settings = muse.MuseSettings(source=muse.MuseSource(kind="local", path=str(folder)))
    with pytest.raises(UserInputError, match=expected) as info:
        muse.load_muse_run_data(settings, tmp_path)
    assert f"{config}/{split}.jsonl" in str(info.value)


def test_missing_split_and_idk_methods(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path / "m")
    (folder / "raw" / "retain2.jsonl").unlink()
    settings = muse.MuseSettings(source=muse.MuseSource(kind="local", path=str(folder)))
    with pytest.raises(UserInputError, match="no file for config 'raw' split 'retain2'"):
        muse.load_muse_run_data(settings, tmp_path)
    with pytest.raises(UserInputError, match="needs a QA benchmark"):
        muse.MuseBenchmark().check_method("idk_dpo")


def test_evaluation_on_a_tiny_model(tmp_path: Path) -> None:
    data = muse.load_muse_run_data(muse.MuseSettings(source=muse.MuseSource(generator=SMALL)), tmp_path)
    config = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=32, vocab_size=400)  # fmt: skip
    tokenizer = build_tiny_tokenizer(data.corpus(), config, tmp_path)
    model = build_tiny_model(tokenizer, config, seed=0, dtype=__import__("torch").float32)
    settings = data.settings.model_copy(update={"verbmem_max_new_tokens": 4, "knowmem_max_new_tokens": 4})
    data = muse.MuseRunData(settings, data.raw, data.verbmem, data.knowmem, data.privleak)
    as_retrain = muse.evaluate_muse(model, tokenizer, data, 8, 2, 64, None)
    m = as_retrain.metrics
    assert set(m) == {
        "verbmem_forget",
        "knowmem_forget",
        "knowmem_retain",
        "privleak",
        "privleak_auc",
        "privleak_abs",
    }
    assert m["privleak"] == 0.0 and 0.0 <= m["privleak_auc"] <= 1.0
    splits = [e["split"] for e in as_retrain.examples]
    assert splits.count("verbmem_forget") == 2 and splits.count("privleak_holdout") == 4
    # Against a Retrain AUC of 0.5, PrivLeak is (AUC - 0.5) / 0.5 * 100 of the same AUC.
    against = muse.evaluate_muse(model, tokenizer, data, 8, 2, 64, 0.5).metrics
    assert against["privleak"] == pytest.approx((m["privleak_auc"] - 0.5) / 0.5 * 100)
    # The per-example Min-K% scores give back the AUC.
    from raysimnpo.maths.metrics.mia import auc

    scores = {s: np.array([e["min_k_score"] for e in as_retrain.examples if e["split"] == f"privleak_{s}"])
              for s in ("forget", "holdout")}  # fmt: skip
    assert auc(scores["holdout"], scores["forget"]) == pytest.approx(m["privleak_auc"])


def test_items_scored_in_batches_aggregate_to_the_same_metrics(tmp_path: Path) -> None:
    """What Ray Data evaluation does: items scored a few at a time, in any order, then aggregated."""
    data = muse.load_muse_run_data(muse.MuseSettings(source=muse.MuseSource(generator=SMALL)), tmp_path)
    config = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=32, vocab_size=400)  # fmt: skip
    tokenizer = build_tiny_tokenizer(data.corpus(), config, tmp_path)
    model = build_tiny_model(tokenizer, config, seed=0, dtype=__import__("torch").float32)
    whole = muse.evaluate_muse(model, tokenizer, data, 8, 2, 64, 0.5)
    items = muse.evaluation_items(data, 2)
    assert len(items) == len(whole.examples)
    batches = [items[i : i + 3] for i in range(0, len(items), 3)][::-1]
    scored = [e for b in batches for e in muse.score_items(model, tokenizer, data.settings, b, 8, 64)]
    batched = muse.aggregate(data.settings, scored, 0.5)
    assert [(e["split"], e["index"]) for e in batched.examples] == [
        (e["split"], e["index"]) for e in whole.examples
    ]
    for name, value in whole.metrics.items():
        assert batched.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
