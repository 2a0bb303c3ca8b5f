"""The benchmarks (TOFU, MUSE, WMDP, the Markov study) behind one protocol (`base.Benchmark`).

`BENCHMARKS` (name -> Benchmark) lives in `registry`; it is also reachable here, imported on first
use, because the benchmark modules import `raysimnpo.config`, which imports this package.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "BENCHMARKS":
        from .registry import BENCHMARKS

        return BENCHMARKS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
