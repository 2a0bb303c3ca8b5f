"""What a sweep shows: our progress and our errors on the console, everything else in a log file.

Ray (its C++ core worker, Tune, Ray Data, the output its workers forward to the driver) and
transformers write to the process's stdout/stderr file descriptors, from threads and native code
that Python-level logging settings do not reach. A quiet console therefore points descriptors 1
and 2 at `<run>/logs/sweep-<time>.log` and keeps duplicates of the terminal's descriptors for our
own lines (`Console.say`, `Console.error`). `--verbose` leaves the descriptors alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class Console:
    """Where our own lines go: `say` for progress (stdout), `error` for failures (stderr)."""

    def __init__(self, out: TextIO, err: TextIO, log_file: Path | None) -> None:
        self.out, self.err, self.log_file = out, err, log_file

    def __getstate__(self) -> dict[str, object]:
        # Tune pickles its callbacks (the Progress line printer holds `say`) into the experiment
        # state; streams do not pickle, and an unpickled Console writes to its process's streams.
        return {"log_file": self.log_file}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.out, self.err = sys.stdout, sys.stderr
        self.log_file = state["log_file"]  # type: ignore[assignment]

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def error(self, message: str) -> None:
        """One line on the console; where the full log is, when it is not on the console."""
        where = f" (log: {self.log_file})" if self.log_file is not None else ""
        print(f"{message}{where}", file=self.err, flush=True)


def quiet_libraries() -> None:
    """No progress bars from transformers / huggingface_hub (`Writing model shards`, downloads),
    and only transformers' errors, in this process and in Ray workers started after this (they
    inherit the environment). Set with setdefault: a user's own setting wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        transformers_logging.set_verbosity_error()


def log_file_name() -> str:
    return f"sweep-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}.log"


@contextlib.contextmanager
def routed_output(log_file: Path | None) -> Iterator[Console]:
    """Inside the block, descriptors 1 and 2 (and so every library's output) write to `log_file`,
    and the yielded Console writes to the terminal; `log_file` None (`--verbose`): all on the
    terminal. The descriptors are restored on exit, also after an exception."""
    if log_file is None:
        yield Console(sys.stdout, sys.stderr, None)
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no terminal colour codes in a file
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    out, err = _terminal(sys.stdout, saved_out), _terminal(sys.stderr, saved_err)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield Console(out, err, log_file)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        for stream in (out, err):
            if stream not in (sys.stdout, sys.stderr):
                stream.close()


def _terminal(stream: TextIO, saved_fd: int) -> TextIO:
    """Our lines' stream: a copy of the terminal's descriptor when `stream` writes to descriptor
    1 or 2; else `stream` itself (a notebook's or a test's captured stream, which the descriptors
    do not reach anyway)."""
    try:
        on_descriptor = stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        on_descriptor = False
    return os.fdopen(os.dup(saved_fd), "w", buffering=1) if on_descriptor else stream
