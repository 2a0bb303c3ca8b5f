"""The command lines' argument parser: a mistake in the flags is one `error:` line and exit 2, like
every other user mistake (`raysimnpo.errors.UserInputError`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


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
