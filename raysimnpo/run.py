"""`python -m raysimnpo.run`: the command is `raysimnpo.cli.run`. This name is kept for `python -m` and
for the notebook call `raysimnpo.run(...)`; imported, it is that module."""

import sys

from .cli import run as _command

if __name__ == "__main__":
    sys.exit(_command.main())
sys.modules[__name__] = _command
