"""`make gpu-check` (perf/gpu_check.py) on a machine without GPUs: one clear line, exit 1,
nothing run and no result file written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPUs")
def test_gpu_check_without_a_gpu_says_so_and_exits_1() -> None:
    result_file = ROOT / "perf" / "results" / "gpu_check.json"
    existed = result_file.exists()
    done = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "gpu-check: no CUDA GPU is visible here (torch.cuda.is_available() is False)"
    )
    assert "run `make gpu-check` on a machine with NVIDIA GPUs" in done.stderr
    assert done.stdout == ""
    assert result_file.exists() == existed


def test_gpu_check_settings_validate(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "perf"))
    import gpu_check

    from raysimnpo.config.sweep import load_sweep_config

    sweep = load_sweep_config("tofu", gpu_check.sweep_overrides(8))
    assert (sweep.search.num_trials, sweep.resources.workers, sweep.relearn) == (2, 8, None)
    assert sweep.run.model.name == "smollm2-135m" and sweep.run.device == "cuda"
    config = gpu_check.run_config(tmp_path, tmp_path / "smollm2-135m")
    assert (config.unlearn.batch_size, config.model.dtype) == (gpu_check.BATCH, "bfloat16")
