"""`python -m raysimnpo.sweep`: the command is `raysimnpo.cli.sweep`. This name is kept for `python -m` and
for the notebook call `raysimnpo.sweep(...)`; imported, it is that module."""

import sys

from .cli import sweep as _command

if __name__ == "__main__":
    sys.exit(_command.main())
sys.modules[__name__] = _command
