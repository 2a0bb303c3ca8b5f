"""`python -m raysimnpo import-model smollm2-135m [--cache-dir DIR] [--force]`: install a preset for
offline use (`raysimnpo.gguf`); `--list` prints the presets."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..cache import check_cache_folder, default_cache_dir
from ..errors import UserInputError
from ..models import PRESETS, SMOLLM2_FOLDER, _allowed
from .parser import ArgumentParser


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m raysimnpo import-model", description=__doc__)
    parser.add_argument("preset", nargs="?", choices=[SMOLLM2_FOLDER], help="the preset to install")
    parser.add_argument("--list", action="store_true", help="print the presets")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $RAYSIMNPO_CACHE or ~/.cache/raysimnpo"
    )
    parser.add_argument("--force", action="store_true", help="re-import even when the folder exists")
    args = parser.parse_args(argv)
    if args.list:
        for name, text in PRESETS.items():
            print(f"{name:14s} {text}")
        print(f"{'(other)':14s} {_allowed()}")
        return 0
    if args.preset is None:
        parser.error("give a preset to import, or --list")
    from ..gguf import ImportFailed, import_smollm2

    cache_dir = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    try:
        check_cache_folder(cache_dir, "--cache-dir", given=args.cache_dir is not None)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        path = import_smollm2(cache_dir, force=args.force)
    except ImportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
