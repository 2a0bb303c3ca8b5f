"""The synthetic mixture-of-Markov-chains study (SimNPO paper §5 "Further analyses", appendix B, Fig. 6).

States s = 1..10 of the paper are tokens 0..9 here. A chain with designated states S (|S| = k) and
leakage ε has (appendix B)

    initial distribution  π_j = (1 − ε)/k for j ∈ S,  ε/(10 − k) otherwise
    transition rows       T_i = π for i ∈ S,          the uniform row 0.1·1 otherwise

The retain chain designates {1,2,3} (tokens 0,1,2), Forget1 {4,5,6} (tokens 3,4,5), Forget2 {7,8,9}
(tokens 6,7,8); state 10 (token 9) is nobody's. The metric (DESIGN §6) is KL(true next-state
distribution ‖ model's next-state distribution) at each predicted position, averaged over the positions
of a sequence and then over sequences. On forget data a higher KL means more forgotten (the paper's
"forget quality"); on retain data lower is better ("retain distance").

Pure numpy: no model, no I/O. Inputs are a model's log-probabilities over the 10 states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import xlogy

NUM_STATES = 10
DESIGNATED_STATES: dict[str, tuple[int, ...]] = {
    "retain": (0, 1, 2),
    "forget1": (3, 4, 5),
    "forget2": (6, 7, 8),
}
"""Tokens of each chain's designated states (the paper's {1,2,3}, {4,5,6}, {7,8,9} minus one)."""


@dataclass(frozen=True)
class MarkovChain:
    """A Markov chain over `NUM_STATES` states: `initial` [S] and row-stochastic `transition` [S, S]."""

    initial: NDArray[np.float64]
    transition: NDArray[np.float64]

    def __post_init__(self) -> None:
        n = self.initial.shape[0]
        if self.initial.shape != (n,) or self.transition.shape != (n, n):
            raise ValueError(
                f"need initial [S] and transition [S, S]; got {self.initial.shape}, {self.transition.shape}"
            )
        if np.any(self.initial < 0) or np.any(self.transition < 0):
            raise ValueError("probabilities must be >= 0")
        if not np.allclose(self.initial.sum(), 1.0) or not np.allclose(self.transition.sum(axis=1), 1.0):
            raise ValueError("initial and every transition row must sum to 1")


def designated_chain(states: Sequence[int], epsilon: float, num_states: int = NUM_STATES) -> MarkovChain:
    """Appendix B's chain with designated `states` and leakage `epsilon`.

    π_j = (1 − ε)/k on the k designated states and ε/(num_states − k) elsewhere; the transition row
    of a designated state is π, every other row is uniform (1/num_states).
    """
    chosen = sorted(set(states))
    if not chosen or len(chosen) != len(states) or chosen[0] < 0 or chosen[-1] >= num_states:
        raise ValueError(f"states: need distinct tokens in [0, {num_states}); got {list(states)}")
    if len(chosen) == num_states:
        raise ValueError("states: at least one state must be outside the designated set")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon: must be in [0, 1]; got {epsilon}")
    k = len(chosen)
    initial = np.full(num_states, epsilon / (num_states - k))
    initial[chosen] = (1.0 - epsilon) / k
    transition = np.full((num_states, num_states), 1.0 / num_states)
    transition[chosen] = initial
    return MarkovChain(initial=initial, transition=transition)


def paper_chain(name: str, epsilon: float = 0.2) -> MarkovChain:
    """The retain, forget1 or forget2 chain of appendix B (ε = 0.2 in the paper)."""
    if name not in DESIGNATED_STATES:
        raise ValueError(f"chain {name!r}: unknown; allowed: {', '.join(DESIGNATED_STATES)}")
    return designated_chain(DESIGNATED_STATES[name], epsilon)


def true_next_distributions(
    states: ArrayLike, chain: MarkovChain, predicts_first_state: bool = False
) -> NDArray[np.float64]:
    """The true distribution of every state a causal model predicts in `states` [N, L] (one length L).

    Without a start token (the paper's model, whose vocabulary is the 10 states) the model's output
    at position t, having read s_0..s_t, predicts s_{t+1}: the truth is T[s_t], for t = 0..L−2, so the
    result is [N, L−1, S]. With `predicts_first_state` (a model that also predicts s_0, e.g. from a
    start token) the first row is the initial distribution π and the result is [N, L, S].
    """
    s = np.asarray(states)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"states must be an integer array [N, L]; got {s.dtype} {s.shape}")
    if s.size and (s.min() < 0 or s.max() >= chain.initial.shape[0]):
        raise ValueError(f"states must be tokens in [0, {chain.initial.shape[0]}); got {s.min()}..{s.max()}")
    rows = chain.transition[s[:, :-1]]
    if predicts_first_state:
        first = np.broadcast_to(chain.initial, (s.shape[0], 1, chain.initial.shape[0]))
        rows = np.concatenate([first, rows], axis=1)
    return rows


def kl_divergence(true_probs: ArrayLike, model_log_probs: ArrayLike) -> NDArray[np.float64]:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last axis; 0·log 0 = 0."""
    p = np.asarray(true_probs, dtype=np.float64)
    log_q = np.asarray(model_log_probs, dtype=np.float64)
    if p.shape != log_q.shape:
        raise ValueError(
            f"true_probs and model_log_probs must have the same shape; got {p.shape}, {log_q.shape}"
        )
    return (xlogy(p, p) - np.where(p > 0, p * log_q, 0.0)).sum(axis=-1)


def sequence_kl(
    model_log_probs: ArrayLike, states: ArrayLike, chain: MarkovChain, predicts_first_state: bool = False
) -> NDArray[np.float64]:
    """Per-sequence Markov metric: the mean over predicted positions of KL(truth ‖ model), shape [N].

    `model_log_probs` [N, P, S] are the model's log next-state probabilities at its first P output
    positions (P ≥ L−1, or ≥ L with `predicts_first_state`; extra positions are ignored), `states`
    [N, L] the sequences (all of length L, as within one chain's split); see `true_next_distributions`
    for which output is compared with which true row.
    """
    truth = true_next_distributions(states, chain, predicts_first_state)
    log_q = np.asarray(model_log_probs, dtype=np.float64)
    if log_q.ndim != 3 or log_q.shape[0] != truth.shape[0] or log_q.shape[2] != truth.shape[2]:
        raise ValueError(
            f"model_log_probs must be [N, P, S] = [{truth.shape[0]}, >= {truth.shape[1]}, {truth.shape[2]}]; got {log_q.shape}"
        )
    if log_q.shape[1] < truth.shape[1]:
        raise ValueError(
            f"model_log_probs covers {log_q.shape[1]} positions; the sequences need {truth.shape[1]}"
        )
    if truth.shape[1] == 0:
        raise ValueError("sequences need at least one predicted position")
    return kl_divergence(truth, log_q[:, : truth.shape[1]]).mean(axis=1)


def first_reaching(
    iterations: ArrayLike, forget_kl: ArrayLike, retain_kl: ArrayLike, target: float
) -> tuple[int, float] | None:
    """Fig. 6's comparison point: the first evaluation (in iteration order) whose forget KL is at least
    `target` (e.g. the Retrain model's Forget2 KL), as (iteration, retain KL there); None if none does."""
    it = np.asarray(iterations)
    f, r = np.asarray(forget_kl, dtype=np.float64), np.asarray(retain_kl, dtype=np.float64)
    if not it.shape == f.shape == r.shape or it.ndim != 1:
        raise ValueError(
            f"iterations, forget_kl and retain_kl must be 1-D of one length; got {it.shape}, {f.shape}, {r.shape}"
        )
    order = np.argsort(it, kind="stable")
    reached = np.flatnonzero(f[order] >= target)
    if reached.size == 0:
        return None
    i = order[reached[0]]
    return int(it[i]), float(r[i])
