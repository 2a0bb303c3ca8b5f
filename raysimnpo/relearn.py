"""`python -m raysimnpo.relearn`: the command is `raysimnpo.cli.relearn`. This name is kept for `python -m`; imported, it is that module."""

import sys

from .cli import relearn as _command

if __name__ == "__main__":
    sys.exit(_command.main())
sys.modules[__name__] = _command
