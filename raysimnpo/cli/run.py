"""One unlearning run, no Ray: `python -m raysimnpo.run tofu --method simnpo [--set k=v] [--json]`.

Prepares (or reuses) the Original and Retrain models, unlearns the Original with the chosen method,
evaluates all three, prints every metric side by side and keeps the run under `--out` (default
runs/single/<benchmark>-<method>-<UTC time>): the unlearned model as a Hugging Face folder (`model/`,
reload it with from_pretrained), its per-example rows (`examples.parquet`) and every metric with the
run's configuration (`metrics.json`). In a notebook: `raysimnpo.run("tofu", method="simnpo")`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import check_cache_dir
from ..config.run import RunSettings, load_run_config
from ..errors import UserInputError
from ..results.storage import check_writable, open_storage
from .parser import ArgumentParser

TABLE_METRICS = (
    "forget_quality",
    "model_utility",
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "real_authors_prob",
    "real_authors_rouge",
    "real_authors_truth_ratio",
    "world_facts_prob",
    "world_facts_rouge",
    "world_facts_truth_ratio",
    "forget_quality_ks_statistic",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m raysimnpo.run", description=__doc__)
    parser.add_argument(
        "benchmark",
        help="a sweep name whose run: section is used (tofu, muse-news-generated, wmdp-generated, ...) "
        "or a path to a sweep YAML",
    )
    parser.add_argument("--method", help="unlearning method (ga, grad_diff, npo, simnpo, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--out",
        help="folder for the unlearned model (Hugging Face folder), its per-example rows and metrics "
        "(default: runs/single/<benchmark>-<method>-<UTC time>)",
    )
    return parser.parse_args(argv)


def format_value(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3e}"
    return f"{value:.4f}"


def format_table(columns: dict[str, dict[str, float]], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    names = list(columns)
    metrics = tuple(m for m in metrics if any(m in c for c in columns.values())) or metrics
    width = max(len(m) for m in metrics) + 2
    lines = ["metric".ljust(width) + "".join(n.rjust(14) for n in names)]
    for metric in metrics:
        cells = "".join(format_value(columns[n].get(metric, float("nan"))).rjust(14) for n in names)
        lines.append(metric.ljust(width) + cells)
    return "\n".join(lines)


@dataclass(frozen=True)
class SavedRun:
    """A single run kept on disk: `out/model` (reload with from_pretrained), `out/examples.parquet`
    (the unlearned model's per-example rows), `out/metrics.json` (`payload`)."""

    out: Path
    payload: dict[str, Any]

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Every metric of Original, Retrain and the unlearned model, by column name."""
        return self.payload["metrics"]


def default_out(config: RunSettings) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "single" / f"{config.benchmark}-{config.method.name}-{stamp}"


def check_out(out: Path) -> None:
    if out.exists():
        raise UserInputError(f"--out: {out} already exists; give a new folder (nothing is overwritten)")
    check_writable(open_storage(str(out)), "--out")  # made and removed again: the run renames into it


def launch(
    benchmark: str,
    *,
    method: str | None = None,
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> SavedRun:
    """One unlearning run (what `python -m raysimnpo.run` does, and `raysimnpo.run(...)` in a
    notebook), saved under `out`: written to a hidden staging folder and renamed, so a run that
    fails leaves nothing. Bad input raises UserInputError before anything is trained."""
    config = load_run_config(benchmark, overrides, method=method)
    folder = Path(out) if out is not None else default_out(config)
    check_out(folder)
    check_cache_dir(config, prefix="")
    from ..training.resource_plan import check_layers

    check_layers(config, prefix="")
    from ..recipes import unlearn
    from ..recipes.evaluate import write_examples
    from ..recipes.workspace import save_model
    from .console import quiet_libraries

    quiet_libraries()
    result = unlearn.run(config, log=log)
    columns = {"Original": result.original.metrics}
    if result.retrain is not None:
        columns["Retrain"] = result.retrain.metrics
    columns[config.method.name] = result.unlearned.metrics
    payload = {
        "config": config.model_dump(mode="json"),
        "metrics": columns,
        "training": result.training.epochs,
        "seconds": {"unlearn": result.training.seconds, "evaluate": result.evaluation_seconds},
    }
    assert result.model is not None and result.workspace is not None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        ws = result.workspace
        save_model(result.model, ws.tokenizer, ws.prompt_format, staging / "model")
        write_examples(result.unlearned.examples, staging / "examples.parquet")
        (staging / "metrics.json").write_text(json.dumps(payload, indent=1))
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SavedRun(folder, payload)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        saved = launch(args.benchmark, method=args.method, overrides=args.overrides, out=args.out)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**saved.payload, "out": str(saved.out)}, indent=None))
    else:
        from ..benchmarks.registry import benchmark

        config = saved.payload["config"]
        print(format_table(saved.metrics, benchmark(config["benchmark"]).metrics))
        print(f"\nsaved:    {saved.out}/{{model,examples.parquet,metrics.json}}")
    return 0


class _CallableModule(types.ModuleType):
    """`raysimnpo.run` is this module (`python -m raysimnpo.run`) and, called, `launch`:
    `raysimnpo.run("tofu", method="simnpo")` in a notebook."""

    def __call__(self, *args: Any, **kwargs: Any) -> SavedRun:
        return launch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
