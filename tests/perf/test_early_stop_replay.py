"""perf/early_stop_replay.py: the three rules on two trajectories worked out by hand."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
replay_script = importlib.import_module("early_stop_replay")
Trajectory = replay_script.Trajectory

# A: bad for 3 epochs, then excellent. B: better than A's first 3 epochs, worse than A's 4th.
A = Trajectory("npo", ((0.001, 0.3), (0.002, 0.3), (0.003, 0.3), (0.9, 0.9)), threshold=0.7)
B = Trajectory("simnpo", ((0.01, 0.5), (0.02, 0.4), (0.03, 0.35), (0.6, 0.8)), threshold=0.7)


@pytest.mark.parametrize(
    ("rule", "epochs", "simnpo"),
    [
        ("none", 8, 0.6),
        # after its 3rd epoch every point of B is dominated by A's 4th: B stops, its 4th never runs
        ("any-epoch", 7, 0.0),
        # at epoch 3, B is judged against A's epochs 1-3 only, which it beats: B runs on
        ("rung-wise", 8, 0.6),
    ],
)
def test_each_rule_stops_what_it_should(rule: str, epochs: int, simnpo: float) -> None:
    result = replay_script.replay([A, B], rule, margin=0.0, min_epochs=3)
    assert result["epochs"] == epochs
    assert result["selected"] == {"npo": 0.9, "simnpo": simnpo}  # B's 4th epoch qualifies (MU 0.8 >= 0.7)
    # A's 4th point alone bounds the area: 0.9 x 0.9
    assert result["hypervolume"] == pytest.approx(0.81)
