"""raysimnpo.training.scoring: batched, length-sorted scoring equals scoring one example at a time, and
left-padded batched greedy generation equals generating each prompt alone (and a plain argmax loop)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from raysimnpo.data.formatting import EncodedExample
from raysimnpo.maths.logprobs import IGNORE_INDEX
from raysimnpo.training.scoring import generate_greedy, score_sequences

TinyLlama = Callable[..., LlamaForCausalLM]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # as the `tiny_llama` fixture configures them
VOCAB = 50

pytestmark = pytest.mark.usefixtures("single_thread")


def random_examples(n: int, seed: int) -> list[EncodedExample]:
    """Prompts of 1-6 tokens and answers of 1-9 tokens (+ EOS), ids 3..49: lengths 4 to 17."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [BOS_ID] + [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 6))]
        answer = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 9))] + [EOS_ID]
        out.append(EncodedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    return out


@torch.no_grad()
def one_by_one(model: LlamaForCausalLM, examples: Sequence[EncodedExample]) -> tuple[np.ndarray, np.ndarray]:
    """ℓ_i = −Σ log p(y_t | y_<t) over the labelled positions, each example alone, by hand."""
    nll, tokens = [], []
    for e in examples:
        logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), dim=-1)
        targets = [(t - 1, label) for t, label in enumerate(e.labels) if label != IGNORE_INDEX]
        nll.append(-sum(logp[t, label].item() for t, label in targets))
        tokens.append(len(targets))
    return np.array(nll), np.array(tokens, dtype=np.float64)


def test_score_sequences_equals_one_by_one(tiny_llama: TinyLlama) -> None:
    model = tiny_llama(seed=0, initializer_range=0.2)
    examples = random_examples(11, seed=1)
    expected_nll, expected_n = one_by_one(model, examples)
    assert expected_n.tolist() == [e.n_targets for e in examples]
    assert len({len(e.input_ids) for e in examples}) > 3  # batches really are padded
    for batch_size in (1, 2, 4, 32):
        nll, n = score_sequences(model, examples, batch_size, PAD_ID)
        np.testing.assert_allclose(nll, expected_nll, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(n, expected_n)
    # Another order gives the same value for each example, in the caller's order.
    perm = list(reversed(range(len(examples))))
    nll, n = score_sequences(model, [examples[i] for i in perm], 3, PAD_ID)
    np.testing.assert_allclose(nll, expected_nll[perm], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(n, expected_n[perm])


class FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep`: scored on every position, as before the cut."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_score_sequences_keeps_logits_from_the_first_target_only(tiny_llama: TinyLlama) -> None:
    """The prompt positions get no logits (the LM head is skipped there); the values are those of
    a model that computes logits everywhere."""
    model = tiny_llama(seed=0, initializer_range=0.2)
    examples = random_examples(11, seed=2)
    kept: list[tuple[int, int]] = []
    forward = model.forward

    def recording(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0) -> object:
        out = forward(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        kept.append((input_ids.shape[1], out.logits.shape[1]))
        return out

    model.forward = recording  # type: ignore[method-assign]
    nll, n = score_sequences(model, examples, 4, PAD_ID)
    shortest_prompt = min(e.labels.index(next(x for x in e.labels if x != IGNORE_INDEX)) for e in examples)
    assert shortest_prompt >= 2 and all(k < t for t, k in kept)  # every batch was cut
    full_nll, full_n = score_sequences(FullLogitsOnly(model), examples, 4, PAD_ID)
    np.testing.assert_allclose(nll, full_nll, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(n, full_n)


def test_score_sequences_restores_training_mode(tiny_llama: TinyLlama) -> None:
    model = tiny_llama(seed=0).train()
    score_sequences(model, random_examples(2, seed=0), 2, PAD_ID)
    assert model.training


def word_tokenizer() -> PreTrainedTokenizerFast:
    """WordLevel tokenizer over the tiny model's 50 ids: <pad> <s> </s> <unk> w4 ... w49."""
    vocab = {
        "<pad>": PAD_ID,
        "<s>": BOS_ID,
        "</s>": EOS_ID,
        "<unk>": 3,
        **{f"w{i}": i for i in range(4, VOCAB)},
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@torch.no_grad()
def argmax_loop(model: LlamaForCausalLM, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding without cache or padding: the reference."""
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token == EOS_ID:
            break
        ids.append(token)
        new.append(token)
    return new


def test_generate_greedy_left_padding_equals_alone(tiny_llama: TinyLlama) -> None:
    # A wider initialisation keeps the top-2 logits apart, so float noise cannot flip an argmax.
    model = tiny_llama(seed=3, initializer_range=0.5, num_hidden_layers=2)
    tokenizer = word_tokenizer()
    assert tokenizer.decode([BOS_ID, 7, 8, EOS_ID, PAD_ID], skip_special_tokens=True) == "w7 w8"
    rng = random.Random(0)
    prompts = [[BOS_ID] + [rng.randrange(4, VOCAB) for _ in range(k)] for k in (1, 6, 3, 9, 2, 5)]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=5, batch_size=4)
    alone = [generate_greedy(model, tokenizer, [p], max_new_tokens=5, batch_size=1)[0] for p in prompts]
    assert batched == alone
    reference = [tokenizer.decode(argmax_loop(model, p, 5), skip_special_tokens=True) for p in prompts]
    assert batched == reference
    assert sum(len(text.split()) for text in batched) >= 20  # real continuations, not empty strings
