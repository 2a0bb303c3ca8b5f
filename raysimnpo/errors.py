"""The one exception type for user mistakes, and the command lines' argument parser.

A `UserInputError` carries a single line that names the file or field at fault and what is
allowed; the command-line entry points print it and exit with status 2 before writing anything.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class UserInputError(ValueError):
    """A mistake in what the user supplied (config, flags, data files, model folders)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the same contract as every other mistake: one `error:` line, exit status 2
    (argparse's own prints the usage block first), and no abbreviated flags (`--num-cpu` would
    silently be `--num-cpus`; a typo of a flag is an error like a typo of a setting)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
