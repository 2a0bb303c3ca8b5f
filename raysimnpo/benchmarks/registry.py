"""`BENCHMARKS`: benchmark name -> its `Benchmark` (the protocol of `raysimnpo.benchmarks.base`).

The only place that knows which benchmarks exist; everything else looks a run's benchmark up here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from ..errors import UserInputError
from .base import Benchmark

_CLASSES: dict[str, str] = {
    "tofu": "raysimnpo.benchmarks.tofu:TofuBenchmark",
    "muse": "raysimnpo.benchmarks.muse:MuseBenchmark",
    "wmdp": "raysimnpo.benchmarks.wmdp:WmdpBenchmark",
    "markov": "raysimnpo.benchmarks.markov:MarkovBenchmark",
}


_OWN_SWEEPS = frozenset({"markov"})
"""Benchmarks whose sweep file is run by their own study (`Benchmark.own_sweep`), known without
importing them (the Markov study's module loads torch)."""


def runs_own_sweep(name: str) -> bool:
    """Whether a sweep file of benchmark `name` is run by that benchmark's own study."""
    return name in _OWN_SWEEPS


class _Registry(Mapping[str, Benchmark]):
    """Name -> benchmark, each module imported when its benchmark is first looked up: validating a
    TOFU sweep must not import the Markov study's training code (torch)."""

    def __init__(self, classes: Mapping[str, str]) -> None:
        self._classes, self._made = dict(classes), dict[str, Benchmark]()

    def __getitem__(self, name: str) -> Benchmark:
        if name not in self._made:
            module, _, cls = self._classes[name].partition(":")
            self._made[name] = getattr(importlib.import_module(module), cls)()
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


BENCHMARKS: Mapping[str, Benchmark] = _Registry(_CLASSES)


def benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; an unknown one is a UserInputError listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserInputError(f"benchmark: {name!r} is unknown; allowed: {', '.join(BENCHMARKS)}") from None
