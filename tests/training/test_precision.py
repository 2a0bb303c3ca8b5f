"""raysimnpo.training.precision: a model loaded in bf16 trains with fp32 master weights and bf16 compute, so
an lr 1e-5 run moves its weights as the fp32 run moves them (pure bf16 AdamW rounds most updates away)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

from raysimnpo.config.base import TrainSettings
from raysimnpo.data.formatting import EncodedExample
from raysimnpo.maths.logprobs import IGNORE_INDEX
from raysimnpo.training.loop import train
from raysimnpo.training.precision import fp32_master_weights, loaded_dtype

pytestmark = pytest.mark.usefixtures("single_thread")

EXAMPLES = [
    EncodedExample(
        input_ids=[1, 3 + i, 4 + i, 10 + i, 11 + i, 2], labels=[IGNORE_INDEX] * 3 + [10 + i, 11 + i, 2]
    )
    for i in range(8)
]
# The paper's fine-tuning learning rate (appendix C.1), constant, 24 AdamW steps.
SETTINGS = TrainSettings(epochs=6, learning_rate=1e-5, batch_size=2, weight_decay=0.0, warmup_epochs=0.0)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def bf16_start(tiny_llama: Callable[..., LlamaForCausalLM]) -> LlamaForCausalLM:
    model = tiny_llama(seed=1, num_hidden_layers=2, intermediate_size=64)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model


def test_bf16_model_trains_like_fp32_and_comes_back_in_bf16(
    tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    reference = bf16_start(tiny_llama).float()  # the same starting weights, in float32
    start = flat(reference)
    train(reference, SETTINGS, pad_id=0, seed=0, examples=EXAMPLES)
    fp32_delta = flat(reference) - start

    model = bf16_start(tiny_llama)
    masters: list[torch.Tensor] = []

    def keep_masters(epoch: int) -> dict[str, float]:
        if epoch == SETTINGS.epochs:
            assert loaded_dtype(model) == torch.float32  # the optimizer updates float32 weights
            masters.append(flat(model))
        return {}

    train(model, SETTINGS, pad_id=0, seed=0, examples=EXAMPLES, after_epoch=keep_masters)
    master_delta = masters[0] - start
    assert cosine(master_delta, fp32_delta) > 0.999
    assert float((master_delta - fp32_delta).norm() / fp32_delta.norm()) < 0.05
    moved = float((fp32_delta != 0).float().mean())  # embedding rows of unused tokens get no gradient
    assert float((master_delta != 0).float().mean()) == pytest.approx(moved, abs=0.01)
    # Saved in the dtype it was loaded in; RoPE's inv_freq buffer stays float32.
    assert loaded_dtype(model) == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(flat(model), masters[0].to(torch.bfloat16).float(), rtol=0, atol=0)

    # What the master weights prevent: AdamW in pure bf16 leaves most weights where they were.
    pure = bf16_start(tiny_llama)
    train.__wrapped__(pure, SETTINGS, pad_id=0, seed=0, examples=EXAMPLES)  # type: ignore[attr-defined]
    pure_delta = flat(pure) - start
    assert float((pure_delta != 0).float().mean()) < moved / 2
    assert cosine(pure_delta, fp32_delta) < 0.6


def test_float32_model_is_left_as_it_is(tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    model = tiny_llama(seed=0)
    weight = model.lm_head.weight
    with fp32_master_weights(model):
        assert not torch.is_autocast_enabled("cpu")
        assert model.lm_head.weight is weight and weight.dtype == torch.float32


def test_weights_updated_by_a_step_are_what_the_next_forward_uses(
    tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    """autocast caches bf16 copies of the weights; a step makes them stale, so the cache is emptied."""
    import copy

    model = bf16_start(tiny_llama)
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    with fp32_master_weights(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        model(input_ids=ids).logits.float().square().mean().backward()
        optimizer.step()
        after_step = model(input_ids=ids).logits
        fresh = copy.deepcopy(model)(input_ids=ids).logits  # new parameters: nothing cached for them
    assert after_step.dtype == torch.bfloat16
    torch.testing.assert_close(after_step, fresh, rtol=0, atol=0)
