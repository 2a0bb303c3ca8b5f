"""The argument parser of the command lines (sweep, run, relearn, report).

A mistake in the flags follows the contract of every other user mistake: one `error:` line, exit
status 2 (argparse's own prints the usage block first), and no abbreviated flags (`--num-cpu`
would silently be `--num-cpus`; a typo of a flag is an error like a typo of a setting).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
