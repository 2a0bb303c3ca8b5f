"""Where a sweep runs: its storage folder and the Ray cluster it starts or joins."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ray

from ..errors import UserInputError


def check_storage(storage: str) -> Path:
    """The storage folder must be creatable and writable; checked before Ray starts."""
    if "://" in storage and not storage.startswith("file://"):
        raise UserInputError(f"storage: {storage} - only local folders are supported by this version")
    path = Path(storage.removeprefix("file://")).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserInputError(f"storage: {path} is not writable ({exc.strerror})") from None
    return path


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Join `address` (or RAY_ADDRESS, which `ray job submit` sets), else start a local Ray."""
    if ray.is_initialized():  # a notebook or a test session that already started Ray
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local Ray of our own; cap the object store (30% of RAM by default) for small machines.
    ray.init(num_cpus=num_cpus, object_store_memory=512 * 1024**2, include_dashboard=False)
