"""`BENCHMARKS`: benchmark name -> its `Benchmark` (the protocol of `raysimnpo.benchmarks.base`).

The only place that knows which benchmarks exist; everything else looks a run's benchmark up here.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserInputError
from .base import Benchmark
from .markov import MarkovBenchmark
from .muse import MuseBenchmark
from .tofu import TofuBenchmark
from .wmdp import WmdpBenchmark

BENCHMARKS: Mapping[str, Benchmark] = {
    b.name: b for b in (TofuBenchmark(), MuseBenchmark(), WmdpBenchmark(), MarkovBenchmark())
}


def benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; an unknown one is a UserInputError listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserInputError(f"benchmark: {name!r} is unknown; allowed: {', '.join(BENCHMARKS)}") from None
