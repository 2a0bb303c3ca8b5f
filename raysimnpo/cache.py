"""Where raysimnpo keeps what it can rebuild: generated datasets, tokenizers, imported models."""

import os
import shutil
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """`$RAYSIMNPO_CACHE`, else ~/.cache/raysimnpo."""
    return Path(os.environ.get("RAYSIMNPO_CACHE", str(Path.home() / ".cache" / "raysimnpo")))


def check_cache_folder(folder: str | Path, setting: str, given: bool) -> None:
    """`folder` can be made and written: a read-only home or a mistyped $RAYSIMNPO_CACHE is one
    error line before any work (naming `setting`, and the default when it was not `given`), not a
    traceback in the middle of it. A folder this check had to make is removed again."""
    from .results.storage import check_writable, open_storage

    shown = setting if given else f"{setting} (default: $RAYSIMNPO_CACHE, else ~/.cache/raysimnpo)"
    check_writable(open_storage(str(Path(folder).expanduser())), shown)


def check_cache_dir(run: Any, prefix: str = "run.") -> None:
    """`check_cache_folder` for a run's `cache_dir` (named `prefix` + cache_dir)."""
    check_cache_folder(run.cache_dir, f"{prefix}cache_dir", "cache_dir" in run.model_fields_set)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def link_tree(source: Path, target: Path) -> None:
    """Copy folder `source` to `target` (which must not exist), hard-linking the files where the
    filesystem allows: a prepared model is never modified in place (it is written to a staging
    folder and renamed), so a link is a copy that costs no space (a 7B model is ~13 GB). Written to
    a staging folder and renamed into place; a `target` that appeared meanwhile is kept."""
    staging = target.with_name(f".{target.name}.copy-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=_link_or_copy)
    try:
        staging.rename(target)
    except OSError:  # a concurrent copy won
        shutil.rmtree(staging, ignore_errors=True)


def mirror_prepared(source: Path, target: Path) -> list[str]:
    """Give the prepared folder `target` (`<root>/<original|retrain>-<content hash>`) the parts that
    `source`, a folder of the same name elsewhere, has and it lacks: the weights (`model/`) and each
    stored evaluation (`eval-<key>/`). Returns the names of the parts copied."""
    if not source.is_dir() or source.resolve() == target.resolve():
        return []
    copied = []
    for part in sorted(source.iterdir()):
        if part.name.startswith(".") or not part.is_dir() or (target / part.name).exists():
            continue  # a staging folder of a write in progress, a file, or a part target has
        if part.name == "model" and not (part / "config.json").is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        link_tree(part, target / part.name)
        copied.append(part.name)
    return copied
