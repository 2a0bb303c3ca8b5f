"""Prompt formatting and answer masking with tokenizers built in the test (nothing downloaded)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from raysimnpo.data.formatting import (
    SYSTEM_PROMPT,
    QAEncoder,
    encode_prompt,
    encode_qa,
    format_prompt,
)
from raysimnpo.errors import UserInputError

SPECIALS = ["<pad>", "<s>", "</s>", "[UNK]"]
SENTENCES = [
    "Question: Where was Ann born?\nAnswer: Ann was born in Lyon.",
    "[INST] What does Ann write? [/INST] Ann writes poetry about the sea.",
    "Question: Who is Ann?\nAnswer: A poet from Lyon who writes about the sea and about memory.",
]
Q = "Where was Ann born?"
A = "Ann was born in Lyon."


def _word_level() -> PreTrainedTokenizerFast:
    """Word-level vocabulary over SENTENCES, whitespace/punctuation split, BOS prepended."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="[UNK]"
    )


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained on SENTENCES (no BOS, like SmolLM2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def word_tok() -> PreTrainedTokenizerFast:
    return _word_level()


def _ids(tok: PreTrainedTokenizerFast, words: list[str]) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in words]


def test_plain_masks_the_prompt_and_ends_with_eos(word_tok: PreTrainedTokenizerFast) -> None:
    ex = encode_qa(word_tok, Q, A, "plain", max_length=64)
    prompt = ["<s>", "Question", ":", "Where", "was", "Ann", "born", "?", "Answer", ":"]
    answer = ["Ann", "was", "born", "in", "Lyon", ".", "</s>"]
    assert ex.input_ids == _ids(word_tok, prompt + answer)
    assert ex.labels == [-100] * len(prompt) + _ids(word_tok, answer)
    assert ex.n_targets == 7
    assert ex.labels[-1] == word_tok.eos_token_id
    assert encode_prompt(word_tok, Q, "plain") == _ids(word_tok, prompt)


def test_llama2_chat_format(word_tok: PreTrainedTokenizerFast) -> None:
    assert format_prompt(word_tok, Q, "llama2-chat") == "[INST] Where was Ann born? [/INST]"
    ex = encode_qa(word_tok, Q, A, "llama2-chat", max_length=64)
    prompt = ["<s>", "[", "INST", "]", "Where", "was", "Ann", "born", "?", "[/", "INST", "]"]
    assert ex.input_ids[: len(prompt)] == _ids(word_tok, prompt)
    assert ex.labels == [-100] * len(prompt) + _ids(
        word_tok, ["Ann", "was", "born", "in", "Lyon", ".", "</s>"]
    )


def test_byte_level_bpe_targets_decode_to_the_answer() -> None:
    tok = _byte_level_bpe()
    ex = encode_qa(tok, Q, A, "plain", max_length=128)
    targets = [t for t in ex.labels if t != -100]
    assert targets[-1] == tok.eos_token_id
    assert tok.decode(targets[:-1]) == " " + A
    n_prompt = ex.labels.index(targets[0])
    assert ex.input_ids[:n_prompt] == encode_prompt(tok, Q, "plain")
    assert tok.decode(ex.input_ids[:n_prompt]) == "Question: Where was Ann born?\nAnswer:"


def test_boundary_merge_falls_back_to_prompt_plus_answer_tokens() -> None:
    # A BPE with no pre-tokenizer and the merge ":" + " " -> ": ": tokenizing prompt+answer merges
    # the prompt's final ":" with the answer's leading space, so the prompt is no longer a prefix.
    chars = sorted(set("".join(SENTENCES)))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars, ": "])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(":", " ")], unk_token="[UNK]"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="[UNK]"
    )
    prompt_ids = fast("Question: Where was Ann born?\nAnswer:", add_special_tokens=False)["input_ids"]
    joined = fast("Question: Where was Ann born?\nAnswer: Ann was born in Lyon.", add_special_tokens=False)[
        "input_ids"
    ]
    assert joined[: len(prompt_ids)] != prompt_ids  # the situation this test is about
    ex = encode_qa(fast, Q, A, "plain", max_length=128)
    answer_ids = [vocab[c] for c in " " + A]
    assert ex.input_ids == prompt_ids + answer_ids + [vocab["</s>"]]
    assert ex.labels == [-100] * len(prompt_ids) + answer_ids + [vocab["</s>"]]
    assert encode_prompt(fast, Q, "plain") == prompt_ids


def test_chat_template_uses_a_fixed_system_prompt_and_no_date(word_tok: PreTrainedTokenizerFast) -> None:
    tok = _word_level()
    tok.chat_template = (
        "{% if date_string is not defined %}{% set date_string = 'TODAY' %}{% endif %}"
        "{{ bos_token }}Date: {{ date_string }}\n"
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = format_prompt(tok, Q, "chat-template")
    assert text == f"<s>Date: \n<system> {SYSTEM_PROMPT}\n<user> {Q}\n<assistant>"
    ex = encode_qa(tok, Q, A, "chat-template", max_length=128)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert (
        prompt_ids[0] == tok.bos_token_id and prompt_ids[1] != tok.bos_token_id
    )  # one BOS, from the template
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.labels == [-100] * len(prompt_ids) + _ids(
        tok, ["Ann", "was", "born", "in", "Lyon", ".", "</s>"]
    )


def test_chat_template_errors(word_tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(UserInputError, match="has none; allowed for it: plain, llama2-chat"):
        encode_qa(word_tok, Q, A, "chat-template", max_length=64)
    tok = _word_level()
    tok.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(UserInputError) as info:
        encode_prompt(tok, Q, "chat-template")
    assert str(info.value) == (
        "prompt_format: the tokenizer's chat template failed (TemplateError: System role not supported); "
        "allowed otherwise: plain, llama2-chat"
    )


def test_truncation_keeps_at_least_one_target(word_tok: PreTrainedTokenizerFast) -> None:
    full = encode_qa(word_tok, Q, A, "plain", max_length=64)
    ex = encode_qa(word_tok, Q, A, "plain", max_length=12)  # 10 prompt tokens + 2 answer tokens
    assert ex.input_ids == full.input_ids[:12]
    assert ex.labels == full.labels[:12]
    assert ex.n_targets == 2 and ex.labels[-1] != word_tok.eos_token_id
    assert encode_qa(word_tok, Q, A, "plain", max_length=11).n_targets == 1


def test_no_room_for_the_answer_names_the_question(word_tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(UserInputError) as info:
        encode_qa(word_tok, Q, A, "plain", max_length=10)
    assert str(info.value) == (
        "max_length: the prompt of question 'Where was Ann born?' has 10 tokens, so no answer token fits in "
        "max_length=10; raise max_length or shorten the question"
    )


def test_other_user_errors(word_tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(UserInputError, match="answer: empty for question 'Where was Ann born\\?'"):
        encode_qa(word_tok, Q, "  ", "plain", max_length=64)
    with pytest.raises(
        UserInputError,
        match="prompt_format: 'alpaca' is not known; allowed: plain, llama2-chat, chat-template",
    ):
        encode_qa(word_tok, Q, A, "alpaca", max_length=64)  # type: ignore[arg-type]
    no_eos = PreTrainedTokenizerFast(tokenizer_object=word_tok.backend_tokenizer)
    with pytest.raises(UserInputError, match="has no eos_token"):
        encode_qa(no_eos, Q, A, "plain", max_length=64)


def test_qa_encoder_memoises_encode_qa_and_encode_prompt(word_tok: PreTrainedTokenizerFast) -> None:
    encoder = QAEncoder(word_tok, "llama2-chat")
    first = encoder.qa("w4 w5", "w6 w7", 32)
    assert first == encode_qa(word_tok, "w4 w5", "w6 w7", "llama2-chat", 32)
    assert encoder.qa("w4 w5", "w6 w7", 32) is first  # tokenized once
    assert encoder.qa("w4 w5", "w6 w7", 10) == encode_qa(word_tok, "w4 w5", "w6 w7", "llama2-chat", 10)
    assert encoder.prompt("w4 w5") == encode_prompt(word_tok, "w4 w5", "llama2-chat")
    assert encoder.prompt("w4 w5") is encoder.prompt("w4 w5")
