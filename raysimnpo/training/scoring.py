"""Batch scorers: summed answer NLL per sequence, per-token log-probs, and greedy generation.

Both sort their inputs by length so a batch carries little padding, run one forward (or one
`generate`) per batch, and return results in the caller's order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.collate import pad_left_prompts, pad_right
from ..data.formatting import EncodedExample
from ..maths.logprobs import IGNORE_INDEX, sequence_nll, token_logprobs


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _length_sorted_logits(
    model: PreTrainedModel, examples: Sequence[EncodedExample], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(positions in `examples`, float logits, labels) per batch, longest first so padding stays
    small; the model is in eval mode meanwhile and gets its mode back at the end.

    Only the positions from the batch's earliest target on get logits (`logits_to_keep`, with the
    labels cut to match): the prompt's positions predict nothing that is scored, and the LM head and
    its log-softmax over the vocabulary are a third of a small model's scoring (perf/README.md)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    device = model_device(model)
    cut = "logits_to_keep" in inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = pad_right([examples[i] for i in index], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            labels, keep = batch["labels"], {}
            if cut:  # logits at position t predict label t+1: keep from one before the first target
                start_at = max(int((labels != IGNORE_INDEX).int().argmax(dim=1).min()) - 1, 0)
                labels, keep = labels[:, start_at:], {"logits_to_keep": labels.shape[1] - start_at}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logits = model(**inputs, **keep).logits
            yield index, logits.float(), labels
    finally:
        model.train(was_training)


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, examples: Sequence[EncodedExample], batch_size: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ℓ_i, |y_i|) for every example: summed NLL of its answer targets and their count."""
    nll = np.zeros(len(examples), dtype=np.float64)
    tokens = np.zeros(len(examples), dtype=np.float64)
    for index, logits, labels in _length_sorted_logits(model, examples, batch_size, pad_id):
        batch_nll, batch_tokens = sequence_nll(logits, labels)
        nll[index] = batch_nll.double().cpu().numpy()
        tokens[index] = batch_tokens.double().cpu().numpy()
    return nll, tokens


@torch.no_grad()
def score_token_logprobs(
    model: PreTrainedModel, examples: Sequence[EncodedExample], batch_size: int, pad_id: int
) -> list[np.ndarray]:
    """log π_θ of every target token of every example (for Min-K% Prob), in the caller's order."""
    out: list[np.ndarray] = [np.zeros(0)] * len(examples)
    for index, logits, labels in _length_sorted_logits(model, examples, batch_size, pad_id):
        logp, mask = token_logprobs(logits, labels)
        values, keep = logp.double().cpu().numpy(), mask.cpu().numpy()
        for row, i in enumerate(index):
            out[i] = values[row][keep[row]]
    return out


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy continuations (KV cache, left padding), stopped at EOS, decoded without specials."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    device = model_device(model)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = pad_left_prompts([prompts[i] for i in index], pad_id)
        generated = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        for row, i in enumerate(index):
            outputs[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return outputs
