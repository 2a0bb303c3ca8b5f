"""The report of finished sweeps: `python -m raysimnpo.report RUN_DIR [RUN_DIR ...] [--out DIR]
[--export-best METHOD --to DIR]`.

RUN_DIR is `<storage>/<sweep name>` (a local folder or a pyarrow filesystem URI); its Parquet results
are in RUN_DIR/results. Writes pareto.parquet/.png, table.md/.csv (the SimNPO paper's Table 2
layout), hypervolume.csv, curves.png, generations.md and report.html into RUN_DIR/report (or --out;
required with several RUN_DIRs, which are compared in one report). With --export-best METHOD --to DIR
the checkpoint folder of METHOD's selected trial is also copied to DIR. The work is done by
`analysis.report`; a user mistake prints one line and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config.base import MAX_SEED
from ..errors import UserInputError
from .parser import ArgumentParser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m raysimnpo.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="<storage>/<sweep name> folder(s)")
    parser.add_argument(
        "--out", help="report folder (default RUN_DIR/report; required with several RUN_DIRs)"
    )
    parser.add_argument(
        "--export-best", metavar="METHOD", help="copy METHOD's selected checkpoint (needs --to)"
    )
    parser.add_argument("--to", metavar="DIR", help="destination folder of --export-best (must not exist)")
    parser.add_argument("--examples", type=int, default=8, help="forget questions in generations.md (8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question sample (0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if (args.export_best is None) != (args.to is None):
            raise UserInputError("--export-best/--to: give both (--export-best METHOD --to DIR) or neither")
        if args.export_best is not None and len(args.run_dirs) != 1:
            raise UserInputError(f"--export-best: needs exactly one RUN_DIR; {len(args.run_dirs)} given")
        if args.examples < 0:
            raise UserInputError(f"--examples: {args.examples}; give 0 or more")
        if not 0 <= args.seed <= MAX_SEED:
            raise UserInputError(f"--seed: {args.seed}; give a whole number 0 to {MAX_SEED}")
        from ..analysis.load import load_runs
        from ..analysis.report import (
            best_checkpoint,
            check_export_target,
            report_folder,
            write_report,
        )

        res = load_runs(args.run_dirs)  # every table of every run is read and checked before writing
        out = report_folder(args.run_dirs, args.out)
        target = check_export_target(args.to) if args.to is not None else None
        export = best_checkpoint(res, args.export_best) if args.export_best is not None else None
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    report = write_report(res, out, examples=args.examples, seed=args.seed)
    for row in report.selection.iter_rows(named=True):
        print(
            f"{row['run']}: {row['method']:<12} trial {row['trial_id']}  FQ {row['forget_quality']:.3g}  "
            f"MU {row['model_utility']:.3f}  ({row['reason']})"
        )
    print(f"report: {report.out} ({', '.join(sorted(p.name for p in report.files.values()))})")
    if export is not None and target is not None:
        import shutil

        trial_id, source = export
        shutil.copytree(source, target)
        print(f"exported {args.export_best} trial {trial_id}: {source} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
