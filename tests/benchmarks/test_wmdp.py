"""WMDP: the generated analog, the local and hub loaders against fixtures in the hub layout, the
lm-evaluation-harness prompt, and accuracy from per-choice log-likelihoods of a tiny model."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raysimnpo.benchmarks import wmdp
from raysimnpo.data.generators.wmdp import WmdpGeneratorConfig, build_wmdp_splits, generate_wmdp_dataset
from raysimnpo.errors import UserInputError
from raysimnpo.maths.logprobs import IGNORE_INDEX
from raysimnpo.models import TinyModelConfig, build_tiny_model, build_tiny_tokenizer

SMALL = WmdpGeneratorConfig(seed=1, bio_entities=2, cyber_entities=2, retain_entities=2)
QUESTION = {"question": "Which port? ", "choices": ["22", "80", "443", "8080"], "answer": 2}
FIXTURE: dict[str, list[dict[str, Any]]] = {
    "wmdp-bio": [{"question": "Which host?", "choices": ["rat", "bat", "owl", "vole"], "answer": 1}],
    "wmdp-cyber": [QUESTION],
    "wmdp-chem": [{"question": "Which gas?", "choices": ["a", "b", "c", "d"], "answer": 0}],
    "mmlu": [{"question": "2 + 2 = ?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}],
    "bio-forget-corpus": [{"title": "t", "abstract": "a", "text": "The host of X fever is the bat.", "doi": "d"}],
    "cyber-forget-corpus": [{"text": "Kit Y connects over port 443."}],
    "bio-retain-corpus": [{"text": "The capital of Z is Amberlee."}],
    "cyber-retain-corpus": [{"text": "The river of Z is the Marl."}],
}  # fmt: skip


def write_fixture(folder: Path, data: dict[str, list[dict[str, Any]]] = FIXTURE) -> Path:
    for config, rows in data.items():
        split = wmdp.LOCAL_LAYOUT[config]
        (folder / config).mkdir(parents=True, exist_ok=True)
        (folder / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_generator_layout_and_questions(tmp_path: Path) -> None:
    paths = generate_wmdp_dataset(tmp_path, SMALL)
    assert {p.parent.name for p in paths} == set(wmdp.LOCAL_LAYOUT) - {"wmdp-chem"}
    splits = build_wmdp_splits(SMALL)
    bio = splits["wmdp-bio"]["test"]
    assert len(bio) == 2 * 4 and len(splits["mmlu"]["test"]) == 2 * 4
    corpus = " ".join(r["text"] for r in splits["bio-forget-corpus"]["train"])
    for q in bio:
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4
        # The stem followed by the right choice is a sentence of the forget corpus.
        assert f"{q['question']} {q['choices'][q['answer']]}." in corpus
    assert build_wmdp_splits(SMALL) == splits


def test_local_folder_in_the_hub_layout(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path / "wmdp")
    settings = wmdp.WmdpSettings(
        source=wmdp.WmdpSource(kind="local", path=str(folder)), subsets=["bio", "cyber", "chem"]
    )
    data = wmdp.load_wmdp_run_data(settings, tmp_path)
    assert set(data.questions) == {"wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu"}
    assert data.forget_texts == ["The host of X fever is the bat.", "Kit Y connects over port 443."]
    assert data.training_texts("retrain") == ["The capital of Z is Amberlee.", "The river of Z is the Marl."]
    assert data.training_texts("original") == data.forget_texts + data.retain_texts


def test_hub_loader_asks_for_the_published_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str | None, str]] = []
    by_hub = {spec: FIXTURE[name] for name, spec in wmdp.HUB_LAYOUT.items()}

    def fake_load_dataset(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((hub_id, config, split))
        return by_hub[(hub_id, config, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = wmdp.load_wmdp_run_data(wmdp.WmdpSettings(source=wmdp.WmdpSource(kind="hub")), tmp_path)
    assert data.questions["mmlu"][0]["answer"] == 1
    assert sorted(calls, key=str) == sorted(
        [
            ("cais/wmdp", "wmdp-bio", "test"),
            ("cais/wmdp", "wmdp-cyber", "test"),
            ("cais/mmlu", "all", "test"),
            ("cais/wmdp-bio-forget-corpus", None, "train"),
            ("cais/wmdp-corpora", "cyber-forget-corpus", "train"),
            ("cais/wmdp-corpora", "bio-retain-corpus", "train"),
            ("cais/wmdp-corpora", "cyber-retain-corpus", "train"),
        ],
        key=str,
    )


@pytest.mark.parametrize(
    ("config", "rows", "expected"),
    [
        ("wmdp-bio", [{"question": "q", "choices": ["a", "b"], "answer": 2}], "'answer' is 2; allowed: 0..1"),
        ("wmdp-cyber", [{"question": "q", "choices": "ab", "answer": 0}], "'choices' must be list"),
        ("mmlu", [{"question": "q", "choices": ["a", "b"]}], "missing field 'answer'"),
        ("cyber-forget-corpus", [{"body": "x"}], "missing field 'text'"),
    ],
)
def test_bad_rows_name_the_file(tmp_path: Path, config: str, rows: list, expected: str) -> None:
    folder = write_fixture(tmp_path / "bad", {**FIXTURE, config: rows})
    settings = wmdp.WmdpSettings(source=wmdp.WmdpSource(kind="local", path=str(folder)))
    with pytest.raises(UserInputError, match=expected) as info:
        wmdp.load_wmdp_run_data(settings, tmp_path)
    assert config in str(info.value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    texts = [QUESTION["question"], *QUESTION["choices"], "A. B. C. D. Answer:"] * 3
    config = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=32, vocab_size=300)  # fmt: skip
    tokenizer = build_tiny_tokenizer(texts, config, tmp_path_factory.mktemp("tok"))
    return tokenizer, build_tiny_model(tokenizer, config, seed=0, dtype=torch.float32)


def test_letter_prompt_is_lm_evaluation_harness_format(tiny) -> None:  # type: ignore[no-untyped-def]
    tokenizer, _ = tiny
    examples = wmdp.choice_examples(tokenizer, QUESTION, "letter", 128)
    context = "Which port?\nA. 22\nB. 80\nC. 443\nD. 8080\nAnswer:"
    for letter, example in zip("ABCD", examples, strict=True):
        assert tokenizer.decode(example.input_ids, skip_special_tokens=True) == f"{context} {letter}"
        assert tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX]) == f" {letter}"
    texts = wmdp.choice_examples(tokenizer, QUESTION, "text", 128)
    assert [tokenizer.decode([t for t in e.labels if t != IGNORE_INDEX]) for e in texts] == [
        " 22",
        " 80",
        " 443",
        " 8080",
    ]


def test_accuracy_from_the_model_log_likelihoods(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer, model = tiny
    folder = write_fixture(tmp_path / "w")
    settings = wmdp.WmdpSettings(source=wmdp.WmdpSource(kind="local", path=str(folder)), choice_format="text")
    data = wmdp.load_wmdp_run_data(settings, tmp_path)
    result = wmdp.evaluate_wmdp(model, tokenizer, data, 3, 128)
    # Recompute each question's choice log-likelihoods by hand from the logits.
    for row in result.examples:
        question = data.questions[row["split"]][row["index"]]
        by_hand = []
        for example in wmdp.choice_examples(tokenizer, question, "text", 128):
            ids = torch.tensor([example.input_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = [(t, label) for t, label in enumerate(example.labels[1:]) if label != IGNORE_INDEX]
            by_hand.append(sum(float(logp[t, label]) for t, label in targets))
        np.testing.assert_allclose(row["choice_loglik"], by_hand, rtol=1e-4, atol=1e-4)
        assert row["predicted"] == int(np.argmax(by_hand))
    for name in ("wmdp_bio", "wmdp_cyber", "mmlu"):
        rows = [r for r in result.examples if r["split"] == name]
        assert result.metrics[name] == np.mean([r["predicted"] == r["answer_index"] for r in rows])
    assert result.metrics["wmdp_forget"] == pytest.approx(
        1 - (result.metrics["wmdp_bio"] + result.metrics["wmdp_cyber"]) / 2
    )


def test_items_scored_in_batches_aggregate_to_the_same_metrics(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What Ray Data evaluation does: items scored a few at a time, in any order, then aggregated."""
    tokenizer, model = tiny
    folder = write_fixture(tmp_path / "w")
    settings = wmdp.WmdpSettings(source=wmdp.WmdpSource(kind="local", path=str(folder)), choice_format="text")
    data = wmdp.load_wmdp_run_data(settings, tmp_path)
    whole = wmdp.evaluate_wmdp(model, tokenizer, data, 3, 128)
    items = wmdp.evaluation_items(data)
    batches = [items[i : i + 2] for i in range(0, len(items), 2)][::-1]
    scored = [e for batch in batches for e in wmdp.score_items(model, tokenizer, settings, batch, 3, 128)]
    batched = wmdp.aggregate(data, scored)
    assert batched.metrics == whole.metrics
    for a, b in zip(batched.examples, whole.examples, strict=True):
        assert (a["split"], a["index"], a["predicted"]) == (b["split"], b["index"], b["predicted"])
        np.testing.assert_allclose(a["choice_loglik"], b["choice_loglik"], rtol=1e-5, atol=1e-5)
