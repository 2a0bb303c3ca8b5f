"""raysimnpo.training.sharding: FSDP2 over 2 CPU ranks (gloo) takes the same SimNPO step as one process on the
same global batch, and the gathered state dict round-trips through from_pretrained."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from raysimnpo.data.formatting import PROMPT_FORMAT_FILE, EncodedExample
from raysimnpo.maths.logprobs import IGNORE_INDEX
from raysimnpo.methods import METHODS, SimNPOParams
from raysimnpo.models import TinyModelConfig, build_tiny_model, build_tiny_tokenizer
from raysimnpo.training import sharding
from raysimnpo.training.loop import UnlearnInputs, step_terms

WORLD = 2
CORPUS = [f"Question: Who wrote book {i}?\nAnswer: Author {i} wrote it in {1900 + i}." for i in range(40)]
TINY = TinyModelConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vocab_size=300,
    tie_word_embeddings=True,
)
PARAMS = SimNPOParams(beta=2.5, gamma=0.5, retain_weight=1.0)
# Global batch of 5 forget and 5 retain examples: rank 0 takes rows 0, 2, 4 and rank 1 rows 1, 3, so
# the slices differ in size and (answer lengths below) in target tokens.
FORGET_INDEX = [3, 0, 5, 1, 4]
RETAIN_INDEX = [2, 6, 1, 0, 5]
MAX_NORM = 0.5  # below the gradient norm, so clipping is active


def examples(seed: int, vocab: int) -> list[EncodedExample]:
    """Hand-made QA encodings: a 4-token prompt (masked) and 1 to 8 answer targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for answer_len in (1, 8, 3, 6, 2, 7, 4):
        ids = torch.randint(5, vocab, (4 + answer_len,), generator=g).tolist()
        out.append(EncodedExample(ids, [IGNORE_INDEX] * 4 + ids[4:]))
    return out


def tiny_model(cache: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = build_tiny_tokenizer(CORPUS, TINY, cache)
    return build_tiny_model(tokenizer, TINY, seed=7, dtype=torch.float32), tokenizer


def inputs_for(vocab: int) -> UnlearnInputs:
    return UnlearnInputs(forget=examples(1, vocab), retain=examples(2, vocab))


def full(tensor: torch.Tensor | None) -> torch.Tensor:
    """The whole tensor behind an FSDP2 shard (a DTensor)."""
    assert isinstance(tensor, DTensor)
    return tensor.full_tensor()


def loss_of(
    model: PreTrainedModel, forget: list[int], retain: list[int], pad_id: int, gather: bool
) -> torch.Tensor:
    terms = step_terms(model, PARAMS, inputs_for(model.config.vocab_size), forget, retain, pad_id, None, None)
    if gather:
        terms = sharding.gather_step_terms(terms)
    forget_term, retain_term = METHODS["simnpo"].loss(terms, PARAMS)
    assert retain_term is not None
    return forget_term + PARAMS.retain_weight * retain_term


def _rank(rank: int, port: int, out: str, cache: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, tokenizer = tiny_model(Path(cache))
        pad_id = int(tokenizer.pad_token_id)
        sharding.shard_model(model)
        forget, retain = FORGET_INDEX[rank::WORLD], RETAIN_INDEX[rank::WORLD]
        with torch.no_grad():  # what averaging per-rank losses would give (no gather)
            naive = loss_of(model, forget, retain, pad_id, gather=False)
            dist.all_reduce(naive)
        loss = loss_of(model, forget, retain, pad_id, gather=True)
        loss.backward()
        norm = full(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM))
        grads = {name: full(p.grad) for name, p in model.named_parameters()}
        torch.optim.AdamW(model.parameters(), lr=1e-2).step()
        params = {name: full(p) for name, p in model.named_parameters()}
        state = sharding.full_state_dict(model)
        sharding.save_hf_checkpoint(model, tokenizer, "plain", Path(out) / "checkpoint")
        if rank == 0:
            assert state is not None
            scalars = {"loss": loss.detach(), "naive": naive / WORLD, "norm": norm}
            save_file({k: v.reshape(1) for k, v in scalars.items()}, f"{out}/scalars.safetensors")
            save_file(grads, f"{out}/grads.safetensors")
            save_file(params, f"{out}/params.safetensors")
            save_file(
                {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"},
                f"{out}/state.safetensors",
            )
        else:
            (Path(out) / "rank1.json").write_text(json.dumps({"state_is_none": state is None}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    cache = out / "cache"
    tiny_model(cache)  # train the tokenizer once, so the ranks only read it
    mp.spawn(_rank, args=(free_port(), str(out), str(cache)), nprocs=WORLD, join=True)
    return out


def test_decoder_blocks_of_llama_and_gpt2(tmp_path: Path) -> None:
    llama, _ = tiny_model(tmp_path)
    assert sharding.decoder_blocks(llama) == list(llama.model.layers)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=3, n_head=2))
    assert sharding.decoder_blocks(gpt2) == list(gpt2.transformer.h)
    with pytest.raises(ValueError, match="found no list of repeated decoder blocks"):
        sharding.decoder_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_fsdp_step_equals_single_process_step(fsdp_run: Path) -> None:
    model, tokenizer = tiny_model(fsdp_run / "cache")
    loss = loss_of(model, FORGET_INDEX, RETAIN_INDEX, int(tokenizer.pad_token_id), gather=False)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    sharded = load_file(fsdp_run / "scalars.safetensors")

    assert sharded["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert sharded["norm"].item() == pytest.approx(norm.item(), rel=1e-5)
    assert norm.item() > MAX_NORM  # the clipped gradients below are scaled by MAX_NORM / norm
    # Averaging each rank's own SimNPO + retain loss is not the global-batch loss: the gather matters.
    assert abs(sharded["naive"].item() - loss.item()) > 1e-3
    grads = load_file(fsdp_run / "grads.safetensors")
    assert grads.keys() == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(grads[name], p.grad, atol=1e-7, rtol=1e-5, msg=name)  # |grad| ~ 1e-3


def test_gathered_state_dict_round_trips_through_from_pretrained(fsdp_run: Path) -> None:
    initial, tokenizer = tiny_model(fsdp_run / "cache")
    stepped = load_file(fsdp_run / "params.safetensors")  # the sharded parameters after one AdamW step
    state = load_file(fsdp_run / "state.safetensors")  # rank 0's full_state_dict
    assert json.loads((fsdp_run / "rank1.json").read_text()) == {"state_is_none": True}

    folder = fsdp_run / "checkpoint"
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((folder / PROMPT_FORMAT_FILE).read_text()) == {"prompt_format": "plain"}
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied, as before sharding

    loaded_state = loaded.state_dict()
    assert set(stepped) == {name for name, _ in initial.named_parameters()}
    for name, value in stepped.items():
        assert torch.equal(loaded_state[name], value), name
        assert torch.equal(state[name], value), name
        assert not torch.equal(value, initial.state_dict()[name]), name  # the step changed every tensor
