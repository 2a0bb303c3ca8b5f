"""The recipe tests' shared fixtures: one small run (`first`) per test module, in a cache of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysimnpo.config.run import RunSettings
from raysimnpo.recipes import unlearn

from .small_run import run_settings


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def config(cache: Path) -> RunSettings:
    return RunSettings.model_validate({**run_settings(), "cache_dir": str(cache)})


@pytest.fixture(scope="module")
def first(single_thread: None, config: RunSettings) -> unlearn.RunResult:
    return unlearn.run(config)
