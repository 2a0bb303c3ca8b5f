"""Where raysimnpo keeps what it can rebuild: generated datasets, tokenizers, imported models."""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$RAYSIMNPO_CACHE`, else ~/.cache/raysimnpo."""
    return Path(os.environ.get("RAYSIMNPO_CACHE", str(Path.home() / ".cache" / "raysimnpo")))
