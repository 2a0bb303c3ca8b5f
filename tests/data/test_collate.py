"""Right padding for training/scoring and left padding of prompts for generation."""

from __future__ import annotations

import pytest
import torch

from raysimnpo.data.collate import pad_left_prompts, pad_right
from raysimnpo.data.formatting import EncodedExample


def test_pad_right_pads_labels_with_ignore_index() -> None:
    batch = pad_right(
        [EncodedExample([5, 6, 7], [-100, 6, 7]), EncodedExample([1, 2, 3, 4, 9], [-100, -100, 3, 4, 9])],
        pad_id=0,
    )
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7, -100, -100], [-100, -100, 3, 4, 9]]))
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_right_accepts_mappings_and_rounds_width() -> None:
    batch = pad_right([{"input_ids": [3, 4], "labels": [-100, 4]}], pad_id=1, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[3, 4, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0]]


def test_pad_left_prompts() -> None:
    batch = pad_left_prompts([[7, 8, 9], [4]], pad_id=2)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [2, 2, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_batches() -> None:
    with pytest.raises(ValueError, match="no examples"):
        pad_right([], pad_id=0)
    with pytest.raises(ValueError, match=r"input_ids \(2\) and labels \(1\) differ"):
        pad_right([EncodedExample([1, 2], [2])], pad_id=0)
    with pytest.raises(ValueError, match="empty prompt"):
        pad_left_prompts([[1], []], pad_id=0)
