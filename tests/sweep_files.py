"""The smallest valid sweep file the CLI and config tests change one setting of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def citest_sweep(tmp: Path, **changes: Any) -> dict[str, Any]:
    """Sweep `citest`: storage and cache under `tmp`, SimNPO and NPO, 2 trials; `changes` replace
    top-level sections."""
    base: dict[str, Any] = {
        "name": "citest",
        "storage": str(tmp / "runs"),
        "run": {"cache_dir": str(tmp / "cache")},
        "search": {
            "methods": ["simnpo", "npo"],
            "space": {"simnpo": {"method.beta": {"low": 1.0, "high": 4.0}}},
            "num_trials": 2,
        },
    }
    return {**base, **changes}


def write_citest_sweep(tmp: Path, **changes: Any) -> Path:
    """`citest_sweep` written to `<tmp>/citest.yaml`."""
    path = tmp / "citest.yaml"
    path.write_text(yaml.safe_dump(citest_sweep(tmp, **changes)))
    return path
