"""The small generated TOFU run the recipe tests share: its `run:` section and the check every
reported TOFU metric passes."""

from __future__ import annotations

import math
from typing import Any

from raysimnpo.data.generators.tofu import TofuGeneratorConfig

TOFU_METRICS = (
    *(
        f"{s}_{m}"
        for s in ("forget", "retain", "real_authors", "world_facts")
        for m in ("prob", "rouge", "truth_ratio")
    ),
    "forget_quality",
    "model_utility",
)


def run_settings() -> dict[str, Any]:
    """The `run:` section: small generated data, a very small tiny model, 2 prepare epochs."""
    return {
        "seed": 0,
        "device": "cpu",
        "data": {
            "source": {
                "kind": "generated",
                "generator": TofuGeneratorConfig.preset("small").model_dump(mode="json"),
            },
            "forget_split": "forget10",
            "train_on_utility_splits": True,
        },
        "model": {
            "name": "tiny",
            "dtype": "float32",
            "tiny": {
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "intermediate_size": 64,
                "vocab_size": 300,
            },
        },
        "prepare": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16, "max_length": 128},
        "unlearn": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "max_length": 128},
        "method": {"name": "simnpo"},
        "evaluation": {"batch_size": 64, "max_new_tokens": 4, "engine": "in_process"},
    }


def check_metrics(metrics: dict[str, float]) -> None:
    for key in TOFU_METRICS:
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
