"""The `dashboard` extra: optuna-dashboard opens a sweep's study (the sqlite file the sweep prints as
`study: optuna-dashboard sqlite:///...`), served here on a loopback port and asked through its API."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest

from raysimnpo.config.sweep import SearchSettings
from raysimnpo.orchestration.search import DefineByRun

# (method, FQ, MU): the first two are the Pareto front, the third is dominated by the second.
TRIALS = [("simnpo", 0.9, 0.2), ("npo", 0.5, 0.6), ("npo", 0.4, 0.5)]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return json.loads(answer.read())


def test_dashboard_serves_the_sweep_study(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="pip install -e '.[dashboard]'")
    from optuna_dashboard import wsgi

    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    study = optuna.create_study(study_name="tofu", storage=storage, directions=["maximize", "maximize"])
    space = DefineByRun(SearchSettings(methods=["simnpo", "npo"]))
    for method, fq, mu in TRIALS:
        study.enqueue_trial({"method": method})
        trial = study.ask()
        space(trial)
        study.tell(trial, [fq, mu])

    server = make_server("127.0.0.1", 0, wsgi(storage), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        [summary] = get(port, "/api/studies")["study_summaries"]
        assert summary["study_name"] == "tofu"
        assert summary["directions"] == ["maximize", "maximize"]
        detail = get(port, f"/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 3
        front = sorted(tuple(t["values"]) for t in detail["best_trials"])
        assert front == [(0.5, 0.6), (0.9, 0.2)]
        assert {t["params"][0]["name"] for t in detail["trials"]} == {"method"}
    finally:
        server.shutdown()
        server.server_close()
