"""raysimnpo.maths.logprobs on a 2-token vocabulary whose log-probabilities are known by hand."""

import math

import pytest
import torch

from raysimnpo.maths.logprobs import IGNORE_INDEX, sequence_nll, token_logprobs

LN3 = math.log(3.0)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Vocab {0, 1}. Logits [ln 3, 0] -> softmax (3/4, 1/4); logits [0, 0] -> (1/2, 1/2).
    # Row 0: labels [-100, 0, 1]: position 0 predicts token 0 with p = 3/4, position 1 predicts token 1
    #        with p = 1/2, position 2 predicts nothing (its logits [50, -50] must not matter).
    # Row 1: labels [-100, -100, 0]: only position 1 predicts token 0, with logits [0, ln 3] -> p = 1/4.
    logits = torch.tensor(
        [
            [[LN3, 0.0], [0.0, 0.0], [50.0, -50.0]],
            [[7.0, -7.0], [0.0, LN3], [50.0, -50.0]],
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    return logits, labels


def test_token_logprobs_hand_values_and_mask() -> None:
    logits, labels = _batch()
    logp, mask = token_logprobs(logits, labels)
    assert logp.shape == (2, 2) and mask.shape == (2, 2) and mask.dtype == torch.bool
    assert mask.tolist() == [[True, True], [False, True]]
    expected = torch.tensor([[math.log(3 / 4), math.log(1 / 2)], [0.0, math.log(1 / 4)]], dtype=torch.float64)
    torch.testing.assert_close(logp, expected, atol=1e-12, rtol=0)


def test_sequence_nll_sums_and_counts() -> None:
    logits, labels = _batch()
    nll, n = sequence_nll(logits, labels)
    # Row 0: ℓ = −ln(3/4) − ln(1/2) = ln(8/3) = 0.98083; |y| = 2.  Row 1: ℓ = −ln(1/4) = ln 4; |y| = 1.
    torch.testing.assert_close(nll, torch.tensor([math.log(8 / 3), math.log(4.0)], dtype=torch.float64))
    assert n.dtype == nll.dtype and n.tolist() == [2.0, 1.0]


def test_bfloat16_logits_are_upcast() -> None:
    logits, labels = _batch()
    logp, _ = token_logprobs(logits.to(torch.bfloat16), labels)
    assert logp.dtype == torch.float32
    assert logp[0, 0].item() == pytest.approx(math.log(3 / 4), abs=1e-2)


def test_gradient_flows_only_through_target_positions() -> None:
    logits, labels = _batch()
    logits.requires_grad_(True)
    nll, _ = sequence_nll(logits, labels)
    nll.sum().backward()
    assert logits.grad is not None
    # Last position of each row and row 1's first position predict no target.
    assert torch.all(logits.grad[:, 2] == 0) and torch.all(logits.grad[1, 0] == 0)
    # d(−log softmax(z)_0)/dz = softmax(z) − onehot(0) = (3/4 − 1, 1/4) at row 0, position 0.
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-0.25, 0.25], dtype=torch.float64))


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape"), [((2, 3, 2), (2, 4)), ((2, 3), (2, 3)), ((2, 1, 2), (2, 1))]
)
def test_shape_errors(logits_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="logits|positions"):
        token_logprobs(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))
