"""perf/space_from_points.py: which trials count as good and the ranges read off them, on values
worked out by hand."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
space = importlib.import_module("space_from_points")


@pytest.mark.parametrize(
    ("value", "up", "integer", "expected"),
    [
        (4.512e-4, False, False, 4.5e-4),  # down to 2 significant figures
        (1.0912e-3, True, False, 1.1e-3),  # up
        (3.04, True, False, 3.1),
        (0.0, False, False, 0.0),
        (6.8, False, True, 6.0),  # epochs: whole numbers, outward
        (11.1, True, True, 12.0),
    ],
)
def test_a_band_edge_is_rounded_outward(value: float, up: bool, integer: bool, expected: float) -> None:
    assert space.round_out(value, up, integer) == pytest.approx(expected)


def test_the_good_trials_are_the_top_fraction_and_only_searched_settings_get_a_range() -> None:
    trials = pl.DataFrame(
        {
            "config": [str(i) for i in range(10)],
            "method": ["simnpo"] * 10,
            "best_forget_quality": [i / 10 for i in range(10)],
            "settings": [
                json.dumps(
                    {"method.beta": float(i), "unlearn.epochs": float(2 + i), "unlearn.batch_size": 16.0}
                )
                for i in range(10)
            ],
        }
    )
    found = space.method_ranges(trials, top=0.2, band=(0.1, 0.9))
    # the top 20% of 10 trials: best FQ 0.8 and 0.9, i.e. beta 8 and 9, epochs 10 and 11
    assert found["good_trials"] == 2 and found["good_if_forget_quality_at_least"] == pytest.approx(0.8)
    assert found["best_forget_quality"] == pytest.approx([0.9, 0.8])
    assert set(found["ranges"]) == {"method.beta", "unlearn.epochs"}  # batch size is the same everywhere
    beta = found["ranges"]["method.beta"]
    assert beta["all_trials"] == [0.0, 9.0] and beta["good_trials"] == [8.0, 9.0]
    assert beta["band"] == pytest.approx([8.1, 8.9])  # 10th and 90th percentiles of (8, 9)
    assert found["ranges"]["unlearn.epochs"]["band"] == [10.0, 11.0]  # 10.1 down, 10.9 up


def test_the_pooled_front_is_every_folders_points_together_with_its_hypervolume() -> None:
    # two folders' points: (0.5, 0.6) and (0.2, 0.8) are the front, the second one twice (one setting
    # run in both folders); (0.1, 0.5) is dominated by both
    points = pl.concat(
        [
            pl.DataFrame({"forget_quality": [0.5, 0.1, 0.2], "model_utility": [0.6, 0.5, 0.8]}),
            pl.DataFrame({"forget_quality": [0.2], "model_utility": [0.8]}),
        ]
    )
    pooled = space.pooled_front(points)
    assert pooled["points"] == 4
    assert pooled["front"] == [[0.5, 0.6], [0.2, 0.8]]
    # reference (0, 0): 0.5 x 0.6 plus the strip 0.2 x (0.8 - 0.6)
    assert pooled["hypervolume"] == pytest.approx(0.5 * 0.6 + 0.2 * 0.2)


def test_a_folder_without_results_is_one_message_and_exit_2(tmp_path: Path) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "perf" / "space_from_points.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert f"{tmp_path}/results: no results found" in done.stderr
    assert "Traceback" not in done.stderr
