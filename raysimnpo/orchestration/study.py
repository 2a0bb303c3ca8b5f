"""The sweep's Optuna study on the driver: where its sqlite file lives and how many trials it holds.

No Ray here, so the sweep CLI can read a study while it validates, before Ray starts (extending a
finished sweep with `--resume --set search.num_trials=N` is checked against what the study holds).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config.sweep import SweepConfig
from ..results.storage import Storage

INTERRUPTED = "interrupted"
"""User attr of an Optuna trial that was asked for by a killed driver and never ran."""
ENDED = "ended"
"""User attr of a study trial that has ended but is not told yet (`search.SweepSearch`, deterministic)."""
EPOCH_POINT = "epoch_point"
"""User attr of a study trial that is an earlier epoch of a trial (`orchestration.epochs`), not a trial."""


def study_file(sweep: SweepConfig, storage: Storage) -> Path:
    """The Optuna study's sqlite file on the driver: in the run folder on a local storage, else in
    `<cache_dir>/studies/<hash of the storage URI>/<sweep>/` (copied to the storage after every trial)."""
    if not storage.remote:
        return Path(storage.uri) / sweep.name / "optuna.sqlite"
    key = hashlib.sha256(storage.uri.encode()).hexdigest()[:16]
    return Path(sweep.run.cache_dir).expanduser() / "studies" / key / sweep.name / "optuna.sqlite"


def finished_trials(study_path: Path, study_name: str) -> int:
    """Trials of the study that ran to an end (COMPLETE, PRUNED, or FAIL other than the never-run
    `interrupted` ones); 0 when there is no study yet."""
    if not study_path.is_file():
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # the file exists but the study was never created in it
        return 0
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=ended)
        if not t.user_attrs.get(INTERRUPTED) and not t.user_attrs.get(EPOCH_POINT)
    )


def fetch_study(study_path: Path, storage: Storage, sweep_name: str) -> None:
    """On a remote storage, copy `<run>/optuna.sqlite` to the driver's study file when the driver
    has none (a resumed sweep on another machine)."""
    if storage.remote and not study_path.is_file() and storage.is_file(sweep_name, "optuna.sqlite"):
        study_path.parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(study_path, sweep_name, "optuna.sqlite")
