"""Where a sweep runs: its storage (a folder or a filesystem URI) and the Ray cluster it starts or joins."""

from __future__ import annotations

import os

import ray

from ..storage import Storage, check_writable, open_storage


def check_storage(storage: str) -> Storage:
    """The storage (a local folder or a pyarrow filesystem URI: s3://, gs://, ...) must be
    reachable and writable; checked before Ray starts."""
    location = open_storage(storage)
    check_writable(location)
    return location


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (or RAY_ADDRESS, which `ray job submit` sets), else start a local Ray; True
    when this call connected (so the caller disconnects), False when Ray was already up.

    The workers' output is forwarded to the driver (`log_to_driver`), whose descriptors a quiet
    console points at the run's log file (raysimnpo.console)."""
    if ray.is_initialized():  # a notebook or a test session that already started Ray
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # A local Ray of our own; cap the object store (30% of RAM by default) for small machines.
    ray.init(num_cpus=num_cpus, object_store_memory=512 * 1024**2, include_dashboard=False)
    return True


def stop_ray() -> None:
    ray.shutdown()
