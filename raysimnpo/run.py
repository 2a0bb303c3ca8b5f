"""One unlearning run, no Ray: `python -m raysimnpo.run tofu --method simnpo [--set k=v] [--json]`.

Prepares (or reuses) the Original and Retrain models, unlearns the Original with the chosen method,
evaluates all three and prints every metric side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from .command_line import ArgumentParser
from .config import RunConfig, load_run_config
from .errors import UserInputError

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
BENCHMARK_TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "tofu": TABLE_METRICS,
    "muse": ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak", "privleak_auc"),
    "wmdp": ("wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu", "wmdp_forget"),
}


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config: RunConfig = load_run_config(args.benchmark, args.overrides, method=args.method)
        from . import recipe

        result = recipe.run(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    columns = {"Original": result.original.metrics}
    if result.retrain is not None:
        columns["Retrain"] = result.retrain.metrics
    columns[config.method.name] = result.unlearned.metrics
    if args.json:
        payload = {
            "config": config.model_dump(mode="json"),
            "metrics": columns,
            "training": result.training.epochs,
            "seconds": {"unlearn": result.training.seconds, "evaluate": result.evaluation_seconds},
        }
        print(json.dumps(payload, indent=None))
    else:
        print(format_table(columns, BENCHMARK_TABLE_METRICS[config.benchmark]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
