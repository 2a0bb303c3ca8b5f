"""`python -m raysimnpo <command> ...`: one entry point for every command line (raysimnpo/cli/).

python -m raysimnpo sweep tofu [--set k=v] ...     = python -m raysimnpo.sweep tofu ...
python -m raysimnpo run tofu --method npo ...      = python -m raysimnpo.run ...
python -m raysimnpo report RUN_DIR --out DIR       = python -m raysimnpo.report ...
python -m raysimnpo relearn RUN_DIR ...            = python -m raysimnpo.relearn ...
python -m raysimnpo import-model smollm2-135m      (offline install of a model preset)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "sweep": "sweep",
    "run": "run",
    "report": "report",
    "relearn": "relearn",
    "import-model": "import_model",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"raysimnpo.cli.{COMMANDS[command]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
