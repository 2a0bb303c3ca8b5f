"""Encodings for raw-text benchmarks (MUSE, WMDP), in the `EncodedExample` form every loss reads.

* Raw text for training and unlearning (MUSE's recipe): the text's tokens cut into fixed-length
  chunks, each starting with BOS; the loss is on every token after BOS, so ℓ_i and |y_i| of DESIGN §5
  are the chunk's summed NLL and its number of tokens minus one.
* Scored text for membership inference: the same, one example per text, truncated to `max_length`.
* A continuation after a context (multiple choice, lm-evaluation-harness style): the labels are the
  continuation's tokens only, so ℓ_i is −log π_θ(continuation | context). The context and
  context+continuation are tokenized separately; when the context's tokens are not a prefix of the
  whole (a merge across the boundary) the continuation is tokenized on its own.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..errors import UserInputError
from ..maths.logprobs import IGNORE_INDEX
from .formatting import EncodedExample


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None else []


def encode_text_chunks(
    tokenizer: PreTrainedTokenizerBase, text: str, chunk_length: int
) -> list[EncodedExample]:
    """`text` as chunks of at most `chunk_length` tokens (BOS + up to chunk_length − 1 text tokens);
    every token after BOS is a target. An empty text gives no chunk."""
    if chunk_length < 2:
        raise UserInputError(f"chunk_length: {chunk_length} leaves no target token; allowed: >= 2")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = _bos(tokenizer)
    width = chunk_length - len(bos)
    chunks = []
    for start in range(0, len(ids), width):
        piece = ids[start : start + width]
        if not bos and len(piece) < 2:
            continue
        input_ids = bos + piece
        labels = [IGNORE_INDEX] * len(bos) + piece
        if not bos:  # the first token has no context to be predicted from
            labels[0] = IGNORE_INDEX
        chunks.append(EncodedExample(input_ids=input_ids, labels=labels))
    return chunks


def encode_corpus(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], chunk_length: int
) -> list[EncodedExample]:
    """Every text of a corpus as fixed-length chunks, in order."""
    return [chunk for text in texts for chunk in encode_text_chunks(tokenizer, text, chunk_length)]


def encode_scored_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> EncodedExample:
    """One text, truncated to `max_length` tokens with BOS, every token after the first a target."""
    chunks = encode_text_chunks(tokenizer, text, max_length)
    if not chunks:
        raise UserInputError(f"text {text[:40]!r}: no tokens to score")
    return chunks[0]


def encode_prompt_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a raw prompt for generation: BOS + the text's tokens."""
    return _bos(tokenizer) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_continuation(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, max_length: int
) -> EncodedExample:
    """BOS + context + continuation with labels on the continuation only. A context too long for
    `max_length` is cut from the left (as lm-evaluation-harness does), so the continuation fits."""
    if not continuation:
        raise UserInputError(f"continuation: empty after context {context[:40]!r}")
    prompt = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        tail = full[len(prompt) :]
    else:
        tail = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    bos = _bos(tokenizer)
    room = max_length - len(bos) - len(tail)
    if room < 0:
        raise UserInputError(
            f"max_length: the continuation {continuation[:40]!r} has {len(tail)} tokens and does not fit "
            f"in max_length={max_length}"
        )
    prompt = prompt[len(prompt) - room :] if room < len(prompt) else prompt
    input_ids = bos + prompt + tail
    labels = [IGNORE_INDEX] * (len(bos) + len(prompt)) + tail
    return EncodedExample(input_ids=input_ids, labels=labels)
