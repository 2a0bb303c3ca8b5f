"""Padding of encoded examples into batches.

Training and scoring pad on the right (labels padded with IGNORE_INDEX, so padding is never a
target of ℓ_i or |y_i|, DESIGN §5); greedy generation pads prompts on the left so that every
prompt ends at the last position, where generation continues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.formatting import EncodedExample
from ..maths.logprobs import IGNORE_INDEX


def _fields(example: EncodedExample | Mapping[str, Any]) -> tuple[list[int], list[int]]:
    if isinstance(example, EncodedExample):
        return example.input_ids, example.labels
    return list(example["input_ids"]), list(example["labels"])


def pad_right(
    examples: Sequence[EncodedExample | Mapping[str, Any]],
    pad_id: int,
    *,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Right-pad to the longest example: `input_ids` with `pad_id`, `attention_mask` 1 on real
    tokens and 0 on padding, `labels` with IGNORE_INDEX. All int64 tensors of shape [B, T]."""
    if not examples:
        raise ValueError("pad_right: no examples")
    pairs = [_fields(e) for e in examples]
    for ids, lab in pairs:
        if len(ids) != len(lab):
            raise ValueError(f"pad_right: input_ids ({len(ids)}) and labels ({len(lab)}) differ in length")
    width = max(len(ids) for ids, _ in pairs)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(pairs), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, lab) in enumerate(pairs):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(lab, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_left_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """Left-pad prompts for batched generation: `input_ids` [B, T] with `pad_id` on the left and
    `attention_mask` 0 there, 1 on the prompt tokens."""
    if not prompt_ids:
        raise ValueError("pad_left_prompts: no prompts")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("pad_left_prompts: an empty prompt cannot be continued")
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        n = len(ids)
        input_ids[row, width - n :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - n :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
