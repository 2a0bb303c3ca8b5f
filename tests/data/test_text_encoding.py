"""Raw-text chunks (loss on every token after BOS) and scored continuations (labels on the
continuation only), with the tiny tokenizer trained on a few sentences."""

from pathlib import Path

import pytest

from raysimnpo.data.text_encoding import (
    encode_continuation,
    encode_corpus,
    encode_prompt_text,
    encode_scored_text,
    encode_text_chunks,
)
from raysimnpo.errors import UserInputError
from raysimnpo.maths.logprobs import IGNORE_INDEX
from raysimnpo.models import TinyModelConfig, build_tiny_tokenizer

TEXTS = [
    "The tram line will cost 42 million crowns and is due to open in 2027.",
    "Question: Who leads the Quenby Water Board?\nAnswer: Mira Talvik",
    "The natural host of Varnic fever is the marsh rat.",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer(
        TEXTS * 3, TinyModelConfig(vocab_size=300), Path(tmp_path_factory.mktemp("tok"))
    )


def test_chunks_cover_the_text_with_bos_and_targets_after_it(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    chunks = encode_text_chunks(tokenizer, TEXTS[0], 5)
    bos = tokenizer.bos_token_id
    # Every chunk: BOS + up to 4 text tokens; the text tokens, in order, are exactly the text's.
    assert all(c.input_ids[0] == bos and len(c.input_ids) <= 5 for c in chunks)
    assert [t for c in chunks for t in c.input_ids[1:]] == ids
    assert len(chunks) == -(-len(ids) // 4)
    for c in chunks:
        assert c.labels[0] == IGNORE_INDEX
        assert c.labels[1:] == c.input_ids[1:]
        assert c.n_targets == len(c.input_ids) - 1
    assert sum(len(encode_text_chunks(tokenizer, t, 5)) for t in TEXTS) == len(
        encode_corpus(tokenizer, TEXTS, 5)
    )
    with pytest.raises(UserInputError, match="chunk_length"):
        encode_text_chunks(tokenizer, TEXTS[0], 1)


def test_scored_text_and_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    scored = encode_scored_text(tokenizer, TEXTS[1], 6)
    assert scored.input_ids == [tokenizer.bos_token_id, *ids[:5]]
    assert encode_prompt_text(tokenizer, TEXTS[1]) == [tokenizer.bos_token_id, *ids]


def test_continuation_labels_only_the_continuation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    context, continuation = "The natural host of Varnic fever is the", " marsh rat"
    example = encode_continuation(tokenizer, context, continuation, 64)
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    assert example.input_ids == [tokenizer.bos_token_id, *whole]
    targets = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(targets) == continuation
    # A context too long is cut from the left, keeping BOS and the whole continuation.
    short = encode_continuation(tokenizer, context, continuation, len(targets) + 3)
    assert len(short.input_ids) == len(targets) + 3
    assert short.input_ids[0] == tokenizer.bos_token_id
    assert [t for t in short.labels if t != IGNORE_INDEX] == targets
