"""The search's own analysis: optimisation history and hyperparameter importances from the study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from raysimnpo.analysis import search
from raysimnpo.analysis.plots import history_figure, importance_figure


def write_study(run_dir: Path, values: list[tuple[str, dict[str, float], tuple[float, float]]]) -> None:
    """A study as the sweep writes it: conditional `<method>/<setting>` names, two objectives named."""
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / search.STUDY_FILE}")
    study = optuna.create_study(study_name="demo", storage=storage, directions=["maximize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["forget_quality", "loss"])
    methods = sorted({m for m, _, _ in values})
    for method, params, objective in values:
        distributions: dict[str, optuna.distributions.BaseDistribution] = {
            "method": optuna.distributions.CategoricalDistribution(methods)
        }
        distributions.update(
            {f"{method}/{k}": optuna.distributions.FloatDistribution(0.0, 10.0) for k in params}
        )
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": method, **{f"{method}/{k}": v for k, v in params.items()}},
                distributions=distributions,
                values=list(objective),
            )
        )


def test_history_keeps_the_best_so_far_in_each_direction(tmp_path: Path) -> None:
    write_study(
        tmp_path / "run",
        [
            ("simnpo", {"method.beta": 1.0}, (0.2, 5.0)),
            ("npo", {"method.beta": 2.0}, (0.1, 3.0)),
            ("simnpo", {"method.beta": 3.0}, (0.5, 4.0)),
        ],
    )
    study = search.load_study(str(tmp_path / "run"))
    assert study is not None
    rows = search.history(study, "demo").rows(named=True)
    fq = [
        (r["number"], r["method"], r["value"], r["best_so_far"])
        for r in rows
        if r["objective"] == "forget_quality"
    ]
    loss = [(r["value"], r["best_so_far"]) for r in rows if r["objective"] == "loss"]
    assert fq == [(0, "simnpo", 0.2, 0.2), (1, "npo", 0.1, 0.2), (2, "simnpo", 0.5, 0.5)]
    assert loss == [(5.0, 5.0), (3.0, 3.0), (4.0, 3.0)]  # minimised
    assert {r["direction"] for r in rows if r["objective"] == "loss"} == {"min"}
    history_figure(search.history(study, "demo"))  # draws without error


def test_importances_find_the_setting_each_objective_depends_on(tmp_path: Path) -> None:
    """FQ depends only on β and the loss only on λ: fANOVA gives each almost all the importance."""
    values = []
    for i in range(24):
        beta, lam = (i * 7 % 24) / 2.4, (i * 5 % 24) / 2.4
        values.append(("simnpo", {"method.beta": beta, "method.retain_weight": lam}, (beta**2, 3 * lam)))
    values.append(("npo", {"method.beta": 1.0}, (0.1, 1.0)))  # one trial: no importances for npo
    write_study(tmp_path / "run", values)
    study = search.load_study(str(tmp_path / "run"))
    table = search.importances(study, "demo", seed=0)
    assert set(table["method"].to_list()) == {"simnpo"}
    got = {(r["objective"], r["param"]): r["importance"] for r in table.iter_rows(named=True)}
    assert got[("forget_quality", "method.beta")] > 0.9
    assert got[("loss", "method.retain_weight")] > 0.9
    for objective in ("forget_quality", "loss"):
        total = sum(v for (o, _), v in got.items() if o == objective)
        assert total == pytest.approx(1.0, abs=1e-9)
    assert set(table["trials"].to_list()) == {24}
    importance_figure(table)


def test_a_run_without_a_study_has_empty_tables(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    importances, history = search.search_tables([("demo", str(tmp_path / "run"))])
    assert importances.is_empty() and history.is_empty()
    assert list(history.columns) == list(search.HISTORY_SCHEMA)
