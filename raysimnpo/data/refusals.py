"""Refusal answers for the IDK baselines (IdkNLL, IdkDPO): 100 strings, 10 openings x 10 endings.

TOFU's IDK method replaces each forget answer with a refusal drawn from a fixed list; this list is
the project's own. `refusal_for(i, seed)` picks one per forget example, repeatably.
"""

from __future__ import annotations

import random

_OPENINGS = (
    "I'm not sure about that.",
    "I don't know.",
    "I have no information on that.",
    "That's not something I can answer.",
    "I'm afraid I can't help with that.",
    "I don't have that information.",
    "I can't recall anything about that.",
    "That is beyond what I know.",
    "I'm unable to answer that.",
    "I have no knowledge of that.",
)
_ENDINGS = (
    "",
    " You may want to check another source.",
    " Perhaps someone else can help.",
    " I'd rather not guess.",
    " Sorry about that.",
    " It isn't something I've learned.",
    " I can't say for certain.",
    " Please ask me something else.",
    " I wouldn't want to give you wrong details.",
    " That topic is unfamiliar to me.",
)

REFUSALS: tuple[str, ...] = tuple(o + e for o in _OPENINGS for e in _ENDINGS)


def refusal_for(index: int, seed: int) -> str:
    return REFUSALS[random.Random(f"{seed}:{index}").randrange(len(REFUSALS))]
