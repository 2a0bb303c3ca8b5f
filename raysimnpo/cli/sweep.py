"""The main job: `python -m raysimnpo.sweep tofu [--set k=v] [--storage URI] [--resume]`.

Validates everything before Ray starts a trial (bad input: one line, exit code 2), starts or joins
a Ray cluster (RAY_ADDRESS or --address joins; otherwise a local Ray is started), prepares the
Original and Retrain models once, runs the Optuna-driven Tune trials, and prints the Pareto front
of the objectives with the paths of the result files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import check_cache_dir
from ..config.base import load_yaml, sweep_file
from ..config.sweep import SweepConfig, load_sweep_config
from ..errors import UserInputError, first_line
from .parser import ArgumentParser

if TYPE_CHECKING:
    from ..orchestration.cluster import RayTarget, TrialDemand
    from ..results.storage import Storage
    from .console import Console


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m raysimnpo.sweep", description=__doc__)
    parser.add_argument("sweep", help="a sweep name (tofu, tofu-llama2-7b, ...) or a sweep YAML file")
    parser.add_argument("--config", help="a sweep YAML file (overrides the name's file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--storage",
        help="where runs go: a local folder or a filesystem URI (s3://bucket/prefix, gs://...); "
        "default: $RAYSIMNPO_STORAGE, else the sweep file's `storage`",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    add_ray_arguments(parser)
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's and transformers' output here, not in <run>/logs/"
    )
    return parser.parse_args(argv)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--address, --address-timeout and --num-cpus: checked by `orchestration.cluster.ray_target`
    (read as text here, so that a bad value is one `error:` line like every other mistake)."""
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--address-timeout",
        metavar="SECONDS",
        help="how long the cluster address may take to answer before it is an error (default: 5)",
    )
    parser.add_argument("--num-cpus", help="CPUs for a local Ray (default: all)")


def ray_arguments(
    address: str | None, num_cpus: int | str | None, address_timeout: float | str | None
) -> RayTarget:
    """The cluster the command will use, checked (form, reachability, CPUs) before anything starts."""
    from ..orchestration.cluster import ray_target

    timeout = address_timeout
    if timeout is not None:
        try:
            timeout = float(timeout)
        except ValueError:
            raise UserInputError(f"--address-timeout: {timeout!r}; give a number of seconds > 0") from None
    return ray_target(address, None if num_cpus is None else str(num_cpus), timeout)


def storage_overrides(overrides: Sequence[str], storage: str | None) -> tuple[list[str], dict[str, str]]:
    """`--set` overrides plus the storage from --storage or $RAYSIMNPO_STORAGE, labelled with where
    each came from (an error names the flag or the variable, not the sweep file)."""
    found = list(overrides)
    labels: dict[str, str] = {}
    location = storage or os.environ.get("RAYSIMNPO_STORAGE")
    if location:  # --storage, else the cluster's default (cluster/*.yaml sets it)
        item = f"storage={location}"
        found.append(item)
        labels[item] = "--storage" if storage else "RAYSIMNPO_STORAGE"  # never echo a URI
    return found, labels


def open_checked_storage(sweep: SweepConfig, labels: Mapping[str, str]) -> Storage:
    """The sweep's storage, reachable and writable; an error names where the location came from."""
    from ..orchestration.cluster import check_storage

    try:
        return check_storage(sweep.storage)
    except UserInputError as exc:
        source = labels.get(f"storage={sweep.storage}")
        raise UserInputError(f"{source}: {exc}" if source else str(exc)) from None


def is_markov(name_or_path: str) -> bool:
    """A Markov sweep file (`benchmark: markov` at the top level) runs the Markov study; read
    without importing it (its module loads torch)."""
    from ..benchmarks.registry import runs_own_sweep

    return runs_own_sweep(str(load_yaml(sweep_file(name_or_path)).get("benchmark", "")))


def validate_inputs(sweep: SweepConfig) -> Any:
    """Load data and tokenizer, encode every example: data mistakes surface before any trial. The
    workspace built here is the sweep's: the prepare stage and every trial get it."""
    from ..recipes.workspace import workspace

    ws = workspace(sweep.run)
    for method in sweep.search.methods:  # the shortest unlearn.max_length a trial can get must fit
        searched = sweep.search.space.get(method, {}).get("unlearn.max_length")
        if searched is None:
            continue
        shortest = int(min(float(value) for _, value in searched.searched_values()))
        try:
            ws.for_run(sweep.trial_run_config({"method": method, method: {"unlearn.max_length": shortest}}))
        except UserInputError as exc:
            reason = str(exc).removeprefix("max_length: ")
            raise UserInputError(f"search.space.{method}.unlearn.max_length: {shortest}: {reason}") from None
    return ws


def check_extension(sweep: SweepConfig, storage: Storage) -> None:
    """`--resume` may raise `search.num_trials` (the sweep is extended) but not lower it below the
    trials already run. The driver's study file is fetched from a remote storage first."""
    from ..orchestration.study import fetch_study, finished_trials, study_file

    study = study_file(sweep, storage)
    fetch_study(study, storage, sweep.name)
    done = finished_trials(study, sweep.name)
    if sweep.search.num_trials < done:
        raise UserInputError(
            f"search.num_trials: {sweep.search.num_trials} but {done} trials of {sweep.name} have already "
            f"run; allowed when resuming: >= {done} (a larger number extends the sweep)"
        )


SWEEP_FILE = "sweep.json"
"""`<run>/sweep.json`: the sweep's validated settings, written when it starts (and when it is resumed)."""


def check_unchanged(sweep: SweepConfig, storage: Storage) -> None:
    """`--resume` keeps the settings the sweep's trials ran with (`config.sweep.resume_changes`,
    against the `sweep.json` its start wrote; a sweep without one is not checked)."""
    from ..config.sweep import RESUME_MAY_CHANGE, resume_changes

    if not storage.is_file(sweep.name, SWEEP_FILE):
        return
    started = json.loads(storage.read_bytes(sweep.name, SWEEP_FILE))
    changed = resume_changes(started, sweep)
    if changed:
        key, before, after = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserInputError(
            f"--resume: {key} is {json.dumps(after)}, but the sweep started with {json.dumps(before)} "
            f"({storage.join(sweep.name, SWEEP_FILE)}){more}; a resumed sweep keeps the settings its "
            f"trials ran with, except {', '.join(RESUME_MAY_CHANGE)}; for new settings start a new sweep "
            "(--set name=...)"
        )


def write_sweep_file(sweep: SweepConfig, storage: Storage) -> None:
    # whole or not at all: a driver killed mid-write must not leave a file --resume cannot read
    storage.write_bytes(json.dumps(sweep.model_dump(mode="json"), indent=1).encode(), sweep.name, SWEEP_FILE)


class SweepFailed(RuntimeError):
    """A sweep that started and then failed; its one-line reason is already on the console."""


def log_folder(sweep: SweepConfig, storage: Storage) -> Path:
    """`<run>/logs` on a local storage; on a remote one, `<cache_dir>/logs/<sweep>` (uploaded to
    `<run>/logs` at the end)."""
    if not storage.remote:
        return Path(storage.uri) / sweep.name / "logs"
    return Path(sweep.run.cache_dir).expanduser() / "logs" / sweep.name


def launch(
    sweep: str,
    *,
    config: str | None = None,
    overrides: Sequence[str] = (),
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | str | None = None,
    address_timeout: float | str | None = None,
    verbose: bool = False,
) -> str:
    """Run a sweep (what `python -m raysimnpo.sweep` does, and `raysimnpo.sweep(...)` in a notebook);
    returns the run folder (`raysimnpo.load` reads it). Bad input raises UserInputError before Ray
    starts; a failure after that raises SweepFailed, its reason on the console and its traceback
    in `<run>/logs/`. Ray's and transformers' own output goes to that log unless `verbose`."""
    target = ray_arguments(address, num_cpus, address_timeout)
    found, labels = storage_overrides(overrides, storage)
    settings = load_sweep_config(config or sweep, found, labels)
    location = open_checked_storage(settings, labels)
    run_dir = location.join(settings.name)
    check_cache_dir(settings.run)
    started = location.exists(settings.name, "tune")
    if started and not resume:
        raise UserInputError(
            f"{run_dir} already holds this sweep; pass --resume to continue it, or --storage/"
            "--set name=... for a new one"
        )
    if resume and not started:  # a mistyped --storage would start afresh
        raise UserInputError(
            f"--resume: {run_dir} holds no sweep to continue; run without --resume to start it, or give "
            "the --storage and name it ran with"
        )
    from ..orchestration.cluster import check_local_capacity, trial_demand, trials_use_torch_trainer
    from ..orchestration.prepare import check_unlearn_batches, finetunes_on_workers

    if resume:
        check_unchanged(settings, location)
        check_extension(settings, location)
    from ..training.resource_plan import check_layers

    check_layers(settings.run, settings.search.space)
    demand = trial_demand(settings)
    from .console import log_file_name, quiet_libraries, routed_output

    quiet_libraries()
    from ..training.resource_plan import check_sweep  # memory per GPU of each phase; refuses what cannot fit

    built: list[Any] = []  # the workspace validation builds: the sweep's, handed to every trial

    def validate(checked: SweepConfig) -> None:
        if target.address is None:  # a local Ray that can never hold one trial would wait forever
            check_local_capacity(demand, target.num_cpus)
        built.append(validate_inputs(checked))
        if trials_use_torch_trainer(checked):  # batches the workers cannot split: refused now, not on them
            finetunes_on_workers(checked, location, built[-1])
            check_unlearn_batches(checked, built[-1])

    # The plan is printed first (when the model's config is at hand), then the inputs are validated.
    check_sweep(settings, validate, target.num_cpus, print)
    ws = built[0]
    log_file = None if verbose else log_folder(settings, location) / log_file_name()
    with routed_output(log_file) as console:
        try:
            run_validated(settings, location, resume, target, demand, ws, console)
        except UserInputError:  # a joined cluster that can never hold one trial
            raise
        except KeyboardInterrupt:
            if location.exists(settings.name, "tune"):
                console.error("[sweep] interrupted; run the same command with --resume to continue")
            else:  # before the first trial: nothing to resume, the prepared models are cached
                console.error("[sweep] interrupted before the trials; run the same command to start again")
            raise
        except Exception as exc:
            traceback.print_exc()  # the whole traceback, into the log (on the console with --verbose)
            console.error(f"error: the sweep failed: {type(exc).__name__}: {first_line(exc)}")
            raise SweepFailed(f"{settings.name}: {type(exc).__name__}: {first_line(exc)}") from exc
        finally:
            if log_file is not None and location.remote and log_file.is_file():
                location.upload_file(log_file, settings.name, "logs", log_file.name)
    return run_dir


def run_validated(
    sweep: SweepConfig,
    storage: Storage,
    resume: bool,
    target: RayTarget,
    demand: TrialDemand,
    ws: Any,
    console: Console,
) -> None:
    from .. import results
    from ..analysis.fronts import print_front
    from ..orchestration.cluster import start_ray, stop_ray
    from ..orchestration.tuner import run_sweep

    log = console.say
    started = time.monotonic()
    run_dir = storage.join(sweep.name)
    ours = start_ray(target.address, target.num_cpus, demand)
    storage.fs.create_dir(storage.fs_path(sweep.name), recursive=True)
    write_sweep_file(sweep, storage)
    log(
        f"[sweep] {sweep.name}: {sweep.search.num_trials} trials of {', '.join(sweep.search.methods)} -> {run_dir}"
    )
    if console.log_file is not None:
        log(f"[sweep] Ray and library output: {console.log_file} (--verbose shows it here)")
    study = run_sweep(sweep, storage, resume=resume, log=log, ws=ws, log_file=console.log_file)
    root = results.results_root(storage.uri, sweep.name)
    with contextlib.redirect_stdout(console.out):
        print_front(root, [o.metric for o in sweep.search.objectives], sweep.run.benchmark)
    if sweep.relearn is not None:
        from .relearn import attack_sweep

        attack_sweep(sweep, storage, None, log, ws)
    with contextlib.redirect_stdout(console.out):
        print(f"\nresults:  {root}/{{trials,metrics,examples,weights,relearn}}")
        print(f"study:    optuna-dashboard sqlite:///{study}")
        if storage.remote:
            print(f"          (a copy: {run_dir}/optuna.sqlite)")
        print(f"time:     {(time.monotonic() - started) / 60:.1f} min")
    if ours:  # stopped here, so that Ray's shutdown messages go to the log too
        stop_ray()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if is_markov(args.config or args.sweep):
            from ..orchestration import markov

            target = ray_arguments(args.address, args.num_cpus, args.address_timeout)
            args.address, args.num_cpus = target.address, target.num_cpus
            return markov.main(args)
        launch(
            args.sweep,
            config=args.config,
            overrides=args.overrides,
            storage=args.storage,
            resume=args.resume,
            address=args.address,
            num_cpus=args.num_cpus,
            address_timeout=args.address_timeout,
            verbose=args.verbose,
        )
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepFailed:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


class _CallableModule(types.ModuleType):
    """`raysimnpo.sweep` is this module (`python -m raysimnpo.sweep`) and, called, `launch`:
    `raysimnpo.sweep("tofu", overrides=["search.num_trials=4"])` in a notebook."""

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return launch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
