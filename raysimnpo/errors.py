"""The one exception type for user mistakes.

A `UserInputError` carries a single line that names the file or field at fault and what is
allowed; the command-line entry points print it and exit with status 2 before writing anything.
"""


class UserInputError(ValueError):
    """A mistake in what the user supplied (config, flags, data files, model folders)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
