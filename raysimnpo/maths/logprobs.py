"""Per-token log-probabilities and per-sequence summed NLL (DESIGN §5 notation).

A causal LM's logits at position t predict the token at position t+1, so `logits[:, :-1]` is paired
with `labels[:, 1:]`. Labels are `IGNORE_INDEX` (-100) everywhere except the answer targets (the answer
tokens and the final EOS). For sequence i this gives the paper's quantities

    ℓ_i   = Σ_t −log π_θ(y_t | x, y_<t)      over the answer targets   (so log π_θ(y_i|x_i) = −ℓ_i)
    |y_i| = the number of answer targets

which every objective (paper eqs. 1-5) and the TOFU metrics are written in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T] with the same B, T; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"sequences need at least 2 positions for a causal shift; got T={logits.shape[1]}")


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each target token under the model, with the causal shift.

    Returns `(logp, mask)`, both `[B, T-1]`: `logp[b, t] = log π_θ(labels[b, t+1] | logits[b, t])` where
    `mask[b, t]` (labels[b, t+1] != IGNORE_INDEX) and exactly 0 elsewhere. Half-precision logits are
    upcast to float32 before the log-softmax (bf16 log-probs are too coarse for summed NLLs).
    """
    _check_logits_labels(logits, labels)
    shifted_logits = logits[:, :-1]
    if shifted_logits.dtype in (torch.float16, torch.bfloat16):
        shifted_logits = shifted_logits.float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # cross_entropy with ignore_index returns exactly 0 at ignored positions; no [B,T,V] log-softmax kept.
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    return -nll, mask


def sequence_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence summed NLL ℓ_i and target count |y_i| (DESIGN §5; paper eq. 1's −log π_θ(y|x)).

    Returns `(nll_sum [B], n_tokens [B])`; `n_tokens` is float (same dtype as `nll_sum`) so that ℓ/|y|
    needs no cast. A sequence without targets has ℓ = 0 and |y| = 0; the data layer forbids those.
    """
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum(dim=-1), mask.sum(dim=-1).to(logp.dtype)
