"""Shared fixtures: a tiny random Llama (vocab 50, hidden 16, one layer) built in the test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 50
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def build_tiny_llama(seed: int = 0, initializer_range: float = 0.02, **overrides: int) -> LlamaForCausalLM:
    """A float32 LlamaForCausalLM drawn from `seed` (the global RNG is left as it was)."""
    settings = {"num_hidden_layers": 1, "intermediate_size": 32, **overrides}
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=initializer_range,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **settings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[..., LlamaForCausalLM]:
    """`tiny_llama(seed=0, initializer_range=0.02, **LlamaConfig overrides)`; token ids: <pad> 0, <s> 1, </s> 2."""
    return build_tiny_llama


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread while a module's tiny models train: on a shared 2-core box two spinning
    threads make a tiny model's steps ~10x slower. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------
# An S3-compatible server on loopback (moto's server mode) for the storage tests
# --------------------------------------------------------------------------------------------------
# The endpoint and fake credentials are set here, when pytest loads this file: before any Ray of
# the session starts, so that Ray's worker processes (trials, Ray Data actors) inherit them, as
# they inherit an instance role's on a cloud cluster. Nothing listens on the port until a test asks
# for the `s3_server` fixture.
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


S3_ENDPOINT = f"http://127.0.0.1:{_free_port()}"
for _key, _value in {
    "AWS_ENDPOINT_URL": S3_ENDPOINT,
    "AWS_ACCESS_KEY_ID": "raysimnpo-test",
    "AWS_SECRET_ACCESS_KEY": "raysimnpo-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on the loopback port of AWS_ENDPOINT_URL, as a child process stopped by its
    PID; yields the endpoint. Skipped when moto is not installed (it is in the dev extras)."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    pytest.importorskip("moto.server")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    port = endpoint.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:  # not listening yet (URLError, refused, timed out)
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new empty bucket on the loopback S3 server; yields `s3://<bucket>`."""
    import uuid

    import boto3

    name = f"raysimnpo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the session's local Ray (the `ray_cluster` fixture of tests/orchestration/) are marked
    `ray`: `pytest -m "not ray"` is the fast suite."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
