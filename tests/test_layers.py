"""The layering rule of DESIGN §2, checked on the source of every module: imports point down only.

    L3  cli/                 entry points (and the `python -m raysimnpo.<command>` names at the root)
    L2  orchestration/       the only package that imports ray
    L1  the domain           recipes/ benchmarks/ training/ data/ results/ config/ methods models ...
    L0  maths/               imports nothing of ours
        analysis/            reads only results/, maths/ and the registries (benchmarks, methods)

The rules: maths imports nothing of ours (and no I/O library); the domain never imports
orchestration, cli or analysis; only orchestration imports ray; analysis reads only results, maths
and the registries; orchestration never imports cli or analysis. And tests/ mirrors the package
folder for folder.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raysimnpo"
# The package root's entry points: the lazy notebook facade (`raysimnpo.load/sweep/run`), `python -m
# raysimnpo` and the `python -m raysimnpo.<command>` names kept for users (each is its cli/ module).
ENTRY_POINTS = {"__init__.py", "__main__.py", "sweep.py", "run.py", "report.py", "relearn.py"}
UPPER = ("orchestration", "cli", "analysis")
ALLOWED_IN_MATHS = {
    "torch",
    "numpy",
    "scipy",
    "rouge_score",
    "math",
    "collections",
    "dataclasses",
    "typing",
    "__future__",
    "functools",
}
ANALYSIS_READS = ("results", "maths", "benchmarks", "methods", "errors", "analysis")


def imports(path: Path) -> set[str]:
    """Imported modules, relative imports resolved; `from raysimnpo import results` (or `from . import
    results` inside the package) counts as raysimnpo.results."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("raysimnpo"):
                found.update(f"{base}.{alias.name}" for alias in node.names)
            if base:
                found.add(base)
    return found


def ours(path: Path) -> set[str]:
    """The top-level parts of raysimnpo a module imports (`raysimnpo.maths.pareto` -> "maths")."""
    parts = {m.split(".")[1] for m in imports(path) if m.startswith("raysimnpo.")}
    return parts - {""}


def folder(path: Path) -> str:
    """The layer folder of a module ("maths", "cli", ...), or its name at the package root."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def in_folders(*names: str) -> list[Path]:
    return [p for p in modules() if folder(p) in names]


def domain() -> list[Path]:
    return [
        p
        for p in modules()
        if folder(p) not in UPPER
        and folder(p) != "maths"
        and not (p.parent == PACKAGE and p.name in ENTRY_POINTS)
    ]


@pytest.mark.parametrize("path", modules(), ids=ids)
def test_only_orchestration_imports_ray(path: Path) -> None:
    if folder(path) == "orchestration":
        return
    ray_imports = {m for m in imports(path) if m == "ray" or m.startswith("ray.")}
    assert not ray_imports, (
        f"{ids(path)} imports {sorted(ray_imports)}; Ray belongs in raysimnpo/orchestration/"
    )


@pytest.mark.parametrize("path", in_folders("maths"), ids=ids)
def test_maths_imports_nothing_of_ours(path: Path) -> None:
    for module in imports(path):
        top = module.split(".")[0]
        if top == "raysimnpo":
            assert module.startswith("raysimnpo.maths"), f"{ids(path)} (maths) imports {module}"
        else:
            assert top in ALLOWED_IN_MATHS, f"{ids(path)} (maths) imports {module}"


@pytest.mark.parametrize("path", domain(), ids=ids)
def test_the_domain_never_imports_orchestration_cli_or_analysis(path: Path) -> None:
    upper = ours(path) & set(UPPER)
    assert not upper, f"{ids(path)} (domain) imports raysimnpo.{sorted(upper)}: imports point down only"


@pytest.mark.parametrize("path", in_folders("orchestration"), ids=ids)
def test_orchestration_never_imports_cli_or_analysis(path: Path) -> None:
    upper = ours(path) & {"cli", "analysis"}
    assert not upper, f"{ids(path)} imports raysimnpo.{sorted(upper)}"


@pytest.mark.parametrize("path", in_folders("analysis"), ids=ids)
def test_analysis_reads_only_results_maths_and_the_registries(path: Path) -> None:
    # TOFU's forget quality (KS test) is recomputed on subsets of the examples table (analysis.length);
    # fronts take their directions from maths.metrics.METRICS; the Optuna study of a run on a
    # filesystem URI is read through results.storage (analysis.search).
    others = ours(path) - set(ANALYSIS_READS)
    assert not others, f"{ids(path)} imports raysimnpo.{sorted(others)}"


def test_config_base_is_at_the_bottom() -> None:
    assert ours(PACKAGE / "config" / "base.py") <= {"errors"}


def test_the_layer_rules_see_every_module() -> None:
    seen = set(domain()) | set(in_folders(*UPPER, "maths"))
    seen |= {PACKAGE / name for name in ENTRY_POINTS if (PACKAGE / name).exists()}
    assert seen == set(modules())


def test_tests_mirror_the_package_folder_for_folder() -> None:
    package = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*") if p.is_dir() and any(p.glob("*.py"))}
    tests = {
        p.relative_to(ROOT / "tests")
        for p in (ROOT / "tests").rglob("*")
        if p.is_dir() and any(p.glob("test_*.py"))
    }
    assert package - tests == set(), "package folders without a tests/ folder"
    assert tests - package == {Path("perf")}, "tests/ folders without a package folder (perf/: the scripts)"
