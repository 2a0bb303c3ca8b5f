"""One local Ray per test session, sized for a 2-core CI box (DESIGN §7)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A fresh local Ray (never one found on the host: address="local") with 2 CPUs and a 200 MB
    object store; shut down at the end only if this fixture started it."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        # Workers' and Ray's own actors' output stays in Ray's log files: tests that read a command's
        # stderr (one `error:` line) must not catch a line some earlier test's actor printed late.
        log_to_driver=False,
        dashboard_port=_free_port(),
        _metrics_export_port=_free_port(),
    )
    try:
        yield
    finally:
        ray.shutdown()
