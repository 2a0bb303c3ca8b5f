"""Shared fixtures: a tiny random Llama (vocab 50, hidden 16, one layer) built in the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 50
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def build_tiny_llama(seed: int = 0, initializer_range: float = 0.02, **overrides: int) -> LlamaForCausalLM:
    """A float32 LlamaForCausalLM drawn from `seed` (the global RNG is left as it was)."""
    settings = {"num_hidden_layers": 1, "intermediate_size": 32, **overrides}
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=initializer_range,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **settings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[..., LlamaForCausalLM]:
    """`tiny_llama(seed=0, initializer_range=0.02, **LlamaConfig overrides)`; token ids: <pad> 0, <s> 1, </s> 2."""
    return build_tiny_llama


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread while a module's tiny models train: on a shared 2-core box two spinning
    threads make a tiny model's steps ~10x slower. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
