"""The benchmark registry: one protocol for TOFU, MUSE, WMDP and Markov, and no code outside
raysimnpo/benchmarks/ that branches on a benchmark's name (checked on the source with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from raysimnpo.benchmarks import BENCHMARKS
from raysimnpo.benchmarks.base import objectives
from raysimnpo.maths.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "raysimnpo"
NAMES = frozenset(BENCHMARKS)
CLASS_PREFIXES = tuple(name.capitalize() for name in NAMES)
# What a benchmark's own types are called: TofuRunData, MuseEvaluation, WmdpSettings, MarkovBenchmark...
CLASS_SUFFIXES = ("RunData", "Evaluation", "Settings", "Benchmark", "Workspace")
ALLOWED = {
    # TofuGeneratorConfig.preset's "tofu" is the size preset of the generated data (TOFU's real
    # sizes), one of `default | small | tofu`, not the run's benchmark.
    ("raysimnpo/data/generators/tofu.py", "name == 'tofu'"),
}


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in NAMES


def _names_in(node: ast.AST) -> bool:
    if _is_name(node):
        return True
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(_is_name(e) for e in node.elts)


def _benchmark_class(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.startswith(CLASS_PREFIXES) and name.endswith(CLASS_SUFFIXES)


def _mentions_benchmark(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Attribute) and n.attr == "benchmark")
        or (isinstance(n, ast.Name) and n.id == "benchmark")
        for n in ast.walk(node)
    )


def benchmark_branches(source: str) -> list[str]:
    """Every place in `source` that decides something by a benchmark's name: a comparison or
    membership test with a name (`benchmark == "tofu"`, `x in ("muse", "wmdp")`), a `match` case on a
    name, `isinstance` with a benchmark's own class (`TofuRunData`, ...), a dict keyed by names, a
    lookup by a literal name (`d["tofu"]`, `d.get("wmdp")`), or an attribute named by the benchmark
    (`getattr(config, config.benchmark)`). Returns `ast.unparse` of each."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        hit = False
        if isinstance(node, ast.Compare):
            hit = any(_names_in(side) for side in (node.left, *node.comparators))
        elif isinstance(node, ast.match_case):
            hit = any(isinstance(p, ast.MatchValue) and _is_name(p.value) for p in ast.walk(node.pattern))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id
            in (
                "isinstance",
                "issubclass",
            )
        ):
            kinds = node.args[1:] if len(node.args) > 1 else []
            hit = any(_benchmark_class(k) or any(_benchmark_class(e) for e in ast.walk(k)) for k in kinds)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            hit = len(node.args) > 1 and _mentions_benchmark(node.args[1])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            hit = bool(node.args) and _is_name(node.args[0])
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _is_name(k) for k in node.keys)
        elif isinstance(node, ast.Subscript):
            hit = _is_name(node.slice)
        if hit:
            found.append(
                ast.unparse(node) if not isinstance(node, ast.match_case) else ast.unparse(node.pattern)
            )
    return found


def outside_the_registry() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(PACKAGE / "benchmarks"))


def test_no_code_outside_the_benchmarks_package_branches_on_a_benchmark_name() -> None:
    branches = [
        f"{path.relative_to(ROOT)}: {found}"
        for path in outside_the_registry()
        for found in benchmark_branches(path.read_text())
        if (str(path.relative_to(ROOT)), found) not in ALLOWED
    ]
    assert branches == [], "ask the run's Benchmark (raysimnpo.benchmarks.registry) instead:\n" + "\n".join(
        branches
    )


PLANTED = [
    ('if config.benchmark == "tofu":\n    pass', "config.benchmark == 'tofu'"),
    ('x = "muse" != run.benchmark', "'muse' != run.benchmark"),
    ('ok = benchmark not in ("muse", "wmdp")', "benchmark not in ('muse', 'wmdp')"),
    ("ok = isinstance(ws.data, TofuRunData)", "isinstance(ws.data, TofuRunData)"),
    ("ok = isinstance(e, (muse.MuseEvaluation, int))", "isinstance(e, (muse.MuseEvaluation, int))"),
    ('HEADLINE = {"tofu": 1, "wmdp": 2}', "{'tofu': 1, 'wmdp': 2}"),
    ('m = HEADLINE["markov"]', "HEADLINE['markov']"),
    ('m = HEADLINE.get("wmdp")', "HEADLINE.get('wmdp')"),
    ("s = getattr(config, config.benchmark)", "getattr(config, config.benchmark)"),
    ('match benchmark:\n    case "tofu":\n        pass', "'tofu'"),
]


@pytest.mark.parametrize(("source", "expected"), PLANTED, ids=[p[1] for p in PLANTED])
def test_the_scan_finds_each_planted_branch(source: str, expected: str) -> None:
    assert expected in benchmark_branches(source)


def test_the_scan_fails_on_a_branch_planted_in_the_package(tmp_path: Path) -> None:
    recipe = (PACKAGE / "recipes" / "unlearn.py").read_text()
    planted = recipe + '\n\ndef planted(config):\n    return config.benchmark != "tofu"\n'
    assert benchmark_branches(recipe) == []
    assert benchmark_branches(planted) == ["config.benchmark != 'tofu'"]


def test_the_scan_leaves_plain_code_alone() -> None:
    source = 'name = "tofu-sweep"\nif kind == "original":\n    d = {"trials": 1}\nt: Literal["tofu", "muse"]'
    assert benchmark_branches(source) == []


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_implements_the_protocol(name: str) -> None:
    bench = BENCHMARKS[name]
    assert bench.name == name
    assert set(bench.headline_metrics) <= set(bench.metrics)
    assert set(bench.metrics) <= set(METRICS), "every reported metric needs a direction in METRICS"
    # Default objectives: metrics of the benchmark, directions taken from METRICS.
    for metric, direction in objectives(bench):
        assert metric in bench.metrics and direction == METRICS[metric].direction
    assert bench.methods and all(isinstance(m, str) for m in bench.methods)
    for attribute in (
        "load",
        "training_examples",
        "reference_examples",
        "check_encoding",
        "evaluation_items",
        "score_items",
        "aggregate",
        "retrain_reference",
        "has_retrain",
        "released_model",
        "cache_key_parts",
        "check_method",
        "corpus",
        "forget_description",
    ):
        assert callable(getattr(bench, attribute)), f"{name}.{attribute}"


def test_default_objectives_match_the_benchmark_constants() -> None:
    from raysimnpo.benchmarks import muse, tofu, wmdp

    assert objectives(BENCHMARKS["tofu"]) == tofu.DEFAULT_OBJECTIVES
    assert objectives(BENCHMARKS["muse"]) == muse.DEFAULT_OBJECTIVES
    assert objectives(BENCHMARKS["wmdp"]) == wmdp.DEFAULT_OBJECTIVES


def test_raw_text_benchmarks_refuse_the_idk_methods() -> None:
    assert "idk_dpo" in BENCHMARKS["tofu"].methods
    for name in ("muse", "wmdp"):
        assert "idk_nll" not in BENCHMARKS[name].methods and "simnpo" in BENCHMARKS[name].methods
