"""`python -m raysimnpo.sweep`: bad input stops before Ray; a 3-trial sweep writes its tables."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from raysimnpo import results
from raysimnpo.cli import sweep

SMALL_RUN = {
    "data": {
        "source": {
            "kind": "generated",
            "generator": {
                "n_authors": 10,
                "questions_per_author": 6,
                "n_holdout_authors": 1,
                "n_real_authors": 8,
                "n_world_facts": 8,
                "retain_perturbed_size": 12,
            },
        },
        "forget_split": "forget10",
        "train_on_utility_splits": True,
    },
    "model": {
        "name": "tiny",
        "tiny": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 400,
        },
    },
    "prepare": {"epochs": 2, "learning_rate": 3.0e-3, "batch_size": 16, "max_length": 160},
    "unlearn": {"epochs": 1, "learning_rate": 1.0e-3, "batch_size": 4, "max_length": 160},
    "method": {"name": "simnpo"},
    "evaluation": {"batch_size": 32, "max_new_tokens": 8},
}


def write_sweep(tmp_path: Path, **changes: object) -> Path:
    spec = {
        "name": "citest",
        "storage": str(tmp_path / "runs"),
        "run": dict(SMALL_RUN, cache_dir=str(tmp_path / "cache")),
        "search": {
            "methods": ["simnpo", "npo"],
            "space": {
                "simnpo": {
                    "method.beta": {"low": 1.0, "high": 4.0},
                    "method.retain_weight": {"low": 0.05, "high": 1.0},
                },
                "npo": {"method.beta": {"low": 0.05, "high": 0.5, "log": True}},
            },
            "num_trials": 3,
            "max_concurrent_trials": 1,
        },
    }
    spec.update(changes)
    path = tmp_path / "citest.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["nonesuch"], "unknown sweep or benchmark 'nonesuch'"),
        (
            ["FILE", "--set", "search.space.simnpo.method.beta.low=5"],
            "search.space.simnpo.method.beta: low (5.0) > high (4.0)",
        ),
        (
            ["FILE", "--set", "search.sampler=cmaes"],
            "search.sampler: cmaes does not support 2 objectives; allowed: tpe, nsga2",
        ),
        (
            ["FILE", "--set", "search.methods=[simnpo, forget_harder]"],
            "search.methods: unknown ['forget_harder']",
        ),
        (["FILE", "--storage", "/proc/raysimnpo-runs"], "storage: /proc/raysimnpo-runs is not writable"),
        (
            [
                "FILE",
                "--set",
                "resources.workers=2",
                "--set",
                "resources.cpus_per_worker=0.5",
                "--set",
                "run.prepare.batch_size=1",
            ],
            "prepare.batch_size: 1 cannot be split over 2 workers; allowed: >= 2",
        ),
        # forget10 of SMALL_RUN's data: 6 forget and 54 retain QA, unlearned by 2 or 4 workers
        (
            ["FILE", "--set", "resources.workers=2", "--set", "resources.cpus_per_worker=0.5"]
            + ["--set", "run.unlearn.batch_size=5"],
            "run.unlearn.batch_size: 5: the forget set's 6 examples leave a last batch of 1 for 2 workers; "
            "allowed: a batch size that leaves 0 or at least 2 examples",
        ),
        (
            ["FILE", "--set", "resources.workers=4", "--set", "resources.cpus_per_worker=0.25"]
            + ["--set", "search.space.simnpo.unlearn.batch_size={low: 4, high: 12, integer: true}"],
            "search.space.simnpo.unlearn.batch_size: 4 (so do 5): the forget set's 6 examples leave a last "
            "batch of 2 for 4 workers",
        ),
        (
            ["FILE", "--set", "search.space.npo.unlearn.max_length={low: 24, high: 160, integer: true}"],
            "search.space.npo.unlearn.max_length: 24: the prompt of question",
        ),
    ],
)
def test_bad_input_exits_2_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    import ray

    path = write_sweep(tmp_path)
    argv = [str(path) if a == "FILE" else a for a in argv]
    ray_was_running = ray.is_initialized()  # the session Ray of other tests may be up
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (tmp_path / "runs" / "citest").exists()
    assert ray.is_initialized() == ray_was_running


@pytest.mark.ray
def test_three_trial_sweep_writes_tables_and_study(tmp_path: Path, ray_cluster: None) -> None:
    """Three trials evaluated in memory (`engine: auto`), then the `relearn:` step: each method's
    selected trial is attacked (shortest 20% once, random 20% with two seeds, 2 relearning epochs)
    through Ray Data actors."""
    evaluation = {"batch_size": 32, "max_new_tokens": 8, "engine": "auto"}  # SMALL_RUN's, in memory
    relearn = {"seeds": [0, 1], "epochs": 2, "learning_rate": 3.0e-3, "batch_size": 2}
    path = write_sweep(
        tmp_path,
        run=dict(SMALL_RUN, cache_dir=str(tmp_path / "cache"), evaluation=evaluation),
        relearn=relearn,
    )
    assert sweep.main([str(path)]) == 0
    root = results.results_root(str(tmp_path / "runs"), "citest")

    trials = results.read_table(root, "trials").to_pylist()
    kinds = sorted(t["kind"] for t in trials)
    assert kinds == ["original", "retrain", "trial", "trial", "trial"]
    done = [t for t in trials if t["kind"] == "trial"]
    assert all(t["status"] == "completed" and 0 <= t["forget_quality"] <= 1 for t in done)
    assert {t["method"] for t in done} <= {"simnpo", "npo"}
    retrain = next(t for t in trials if t["kind"] == "retrain")
    assert retrain["forget_quality"] == pytest.approx(1.0)

    metrics = results.read_table(root, "metrics")
    assert set(metrics.column_names) >= {"trial_id", "stage", "epoch", "metric", "value", "schema_version"}
    finals = [m for m in metrics.to_pylist() if m["stage"] == "final" and m["metric"] == "model_utility"]
    assert len(finals) == 5
    for t in done:  # each phase's wall time (PhaseClock); engine auto evaluated the model in memory
        phases = {
            m["metric"]: m["value"]
            for m in metrics.to_pylist()
            if m["stage"] == "timing" and m["trial_id"] == t["trial_id"]
        }
        assert (
            phases["unlearn_seconds"] > 0
            and phases["evaluate_seconds"] > 0
            and phases["workspace_seconds"] > 0
        )
        assert "eval_startup_seconds" not in phases and phases["load_checkpoint_seconds"] < 0.01
        assert sum(phases.values()) <= t["total_seconds"] + 1e-3

    examples = results.read_table(root, "examples")
    # forget (6) + retain_perturbed (12) + real_authors (8) + world_facts (8) per evaluated model
    assert examples.num_rows == 5 * (6 + 12 + 8 + 8)

    weights = results.read_table(root, "weights").to_pylist()
    for t in done:  # one closed-form weight (eq. 3 / eq. 5) per forget example and epoch
        mine = [w for w in weights if w["trial_id"] == t["trial_id"]]
        assert sorted((w["epoch"], w["index"]) for w in mine) == [(1, i) for i in range(6)]
        bound = {"npo": lambda n: 2.0, "simnpo": lambda n: 2.0 / n}[t["method"]]  # w < 2, w' < 2/|y|
        assert all(0 < w["weight"] < bound(w["answer_tokens"]) for w in mine)

    study = tmp_path / "runs" / "citest" / "optuna.sqlite"
    with sqlite3.connect(study) as db:
        states = [row[0] for row in db.execute("SELECT state FROM trials")]
    assert states == ["COMPLETE"] * 3
    for t in done:
        assert os.path.isfile(os.path.join(t["checkpoint"], "model.safetensors"))

    attacked = results.read_table(root, "relearn").to_pylist()
    by_trial: dict[str, list[dict]] = {}
    for row in attacked:
        by_trial.setdefault(row["trial_id"], []).append(row)
    assert sorted(t["method"] for t in done if t["trial_id"] in by_trial) == sorted(
        {t["method"] for t in done}
    )
    for trial_id, rows in by_trial.items():
        runs = sorted({(r["attack"], r["seed"]) for r in rows})
        assert runs == [("random", 0), ("random", 1), ("shortest", 0)]
        assert sorted(r["epoch"] for r in rows) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert {r["relearn_examples"] for r in rows} == {1}  # 20% of 6 forget questions, rounded
        trial = next(t for t in done if t["trial_id"] == trial_id)
        # Before relearning, the attacked model is the trial's checkpoint: the trial's own FQ.
        assert all(
            r["forget_quality"] == pytest.approx(trial["forget_quality"]) for r in rows if r["epoch"] == 0
        )


def kill_once_trials_finish(
    path: Path, trials: int, num_cpus: int, secrets: dict[str, str] | None = None
) -> None:
    """Run `python -m raysimnpo.sweep path` in a session of its own (with `secrets` in its
    environment) and SIGKILL it, the driver and the local Ray it started, once `trials` trials are in
    its results tables."""
    import signal
    import subprocess
    import sys
    import time

    spec = yaml.safe_load(path.read_text())
    root = results.results_root(spec["storage"], spec["name"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysimnpo.sweep", str(path), "--num-cpus", str(num_cpus)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "", **(secrets or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(results.trial_ids(root) - {"original", "retrain"}) < trials:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


TRIALS = 5


@pytest.mark.ray
def test_killed_sweep_resumes_with_every_trial_once(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the driver once two trials are on disk; `--resume` finishes the sweep with every
    trial exactly once in the Parquet tables and in the Optuna study; `--resume --set
    search.num_trials=N` then extends the finished sweep, again with every trial once. Secrets in the driver's
    environment (a hub token, cloud keys) appear in no file of the run: results, study, Tune state."""
    # In-memory evaluation makes trials finish within seconds: the kill lands right after a trial
    # completed, which Tune's experiment state must already hold.
    evaluation = {"batch_size": 32, "max_new_tokens": 8, "engine": "auto"}
    search = {
        "methods": ["simnpo", "npo"],
        "method_choice": "round_robin",
        "num_trials": TRIALS,
        "max_concurrent_trials": 1,
        "sampler": "random",
    }
    path = write_sweep(
        tmp_path, run=dict(SMALL_RUN, cache_dir=str(tmp_path / "cache"), evaluation=evaluation), search=search
    )
    secrets = {
        "HF_TOKEN": "hf_SECRETsentinel0123456789",
        "AWS_ACCESS_KEY_ID": "AKIASECRETSENTINEL01",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-sentinel-0123456789abcdef",
    }
    kill_once_trials_finish(path, 2, num_cpus=1, secrets=secrets)
    root = results.results_root(str(tmp_path / "runs"), "citest")
    assert len(results.trial_ids(root) - {"original", "retrain"}) < TRIALS

    assert sweep.main([str(path), "--resume"]) == 0
    trials = [t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"]
    assert len(trials) == len({t["trial_id"] for t in trials}) == TRIALS
    with sqlite3.connect(tmp_path / "runs" / "citest" / "optuna.sqlite") as db:
        states = [row[0] for row in db.execute("SELECT state FROM trials")]
    # A suggestion asked just before the kill may be left over: it is marked FAIL, never run.
    assert states.count("COMPLETE") == TRIALS and "RUNNING" not in states
    assert sum(t["status"] == "completed" for t in trials) == TRIALS

    # The finished sweep is extended by two trials: a new Tune experiment asks the same study.
    assert sweep.main([str(path), "--resume", "--set", f"search.num_trials={TRIALS + 2}"]) == 0
    trials = [t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"]
    assert len(trials) == len({t["trial_id"] for t in trials}) == TRIALS + 2
    with sqlite3.connect(tmp_path / "runs" / "citest" / "optuna.sqlite") as db:
        states = [row[0] for row in db.execute("SELECT state FROM trials")]
        studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        methods = [
            row[0]
            for row in db.execute(
                "SELECT p.param_value FROM trial_params p JOIN trials t USING (trial_id) "
                "WHERE p.param_name = 'method' AND t.state = 'COMPLETE' ORDER BY t.number"
            )
        ]
    assert states.count("COMPLETE") == TRIALS + 2 and studies == 1
    assert (tmp_path / "runs" / "citest" / "tune-2").is_dir()
    # sweep.json holds the settings the extension ran with; a setting that decides the numbers may
    # not change on a resume (tests/cli/test_sweep.py has the refusal's message)
    started = json.loads((tmp_path / "runs" / "citest" / "sweep.json").read_text())
    assert (
        started["search"]["num_trials"] == TRIALS + 2 and started["search"]["method_choice"] == "round_robin"
    )
    # round_robin: trial i unlearns with methods[i mod 2] (Optuna stores the choice's index: 0 simnpo,
    # 1 npo), through the kill and on into the extension
    assert methods == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # Resuming again with the same number runs nothing; a lower one is refused before Ray.
    assert sweep.main([str(path), "--resume", "--set", f"search.num_trials={TRIALS + 2}"]) == 0
    assert len(results.read_table(root, "trials")) == TRIALS + 2 + 2  # + Original and Retrain
    capsys.readouterr()
    assert sweep.main([str(path), "--resume", "--set", "search.num_trials=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: search.num_trials: 3 but {TRIALS + 2} trials of citest have already run; allowed when "
        f"resuming: >= {TRIALS + 2} (a larger number extends the sweep)"
    ]
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(files) > 20
    leaked = [(p, k) for p in files for k, v in secrets.items() if v.encode() in p.read_bytes()]
    assert not leaked


@pytest.mark.ray
def test_trial_with_two_fsdp2_workers(tmp_path: Path, ray_cluster: None) -> None:
    """resources.workers = 2: Original and Retrain are fine-tuned, and the trial unlearns, on
    TorchTrainers with two FSDP2 (gloo) workers; the gathered checkpoint is evaluated like any other."""
    path = write_sweep(
        tmp_path,
        search={"methods": ["simnpo"], "num_trials": 1},
        resources={"workers": 2, "cpus_per_worker": 0.5},  # the session Ray has 2 CPUs
    )
    assert sweep.main([str(path)]) == 0
    prepared = sorted((tmp_path / "runs" / "prepared").glob("*/model/training.json"))
    assert [p.parent.parent.name.split("-")[0] for p in prepared] == ["original", "retrain"]
    assert all(json.loads(p.read_text())["workers"] == 2 for p in prepared)
    root = results.results_root(str(tmp_path / "runs"), "citest")
    (trial,) = [t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"]
    assert trial["status"] == "completed" and 0 <= trial["model_utility"] <= 1
    assert os.path.isfile(os.path.join(trial["checkpoint"], "model.safetensors"))
    epochs = [m for m in results.read_table(root, "metrics").to_pylist() if m["stage"] == "epoch"]
    assert {m["metric"] for m in epochs} >= {"forget_loss", "retain_loss"}
    # the default engine (ray_data): Ray Data actors load the gathered checkpoint
    phases = {
        m["metric"]: m["value"]
        for m in results.read_table(root, "metrics").to_pylist()
        if m["stage"] == "timing"
    }
    for phase in ("trainer_startup", "unlearn", "eval_startup", "load_checkpoint", "evaluate"):
        assert phases[f"{phase}_seconds"] > 0, phase


# Ray Data's cluster-wide coordinator: a detached, zero-CPU named actor that Ray Data creates once per
# cluster (get_if_exists) on first use and never removes; it is Ray's, not the sweep's.
RAY_SINGLETONS = {"_AutoscalingCoordinatorActor"}


def _alive_placement_groups_and_actors() -> tuple[set[str], dict[str, str]]:
    """Placement groups not REMOVED and actors not DEAD, straight from the GCS.

    `ray.util.state.list_placement_groups` / `list_actors` go through the dashboard's state API,
    which the session Ray runs without (include_dashboard=False); `placement_group_table` and the
    GCS actor table answer without it.
    """
    import ray
    from ray._private import state as gcs_state

    groups = {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"}
    actors = {
        actor_id: actor.get("ActorClassName", "")
        for actor_id, actor in gcs_state.actors().items()
        if actor["State"] != "DEAD" and actor.get("ActorClassName") not in RAY_SINGLETONS
    }
    return groups, actors


@pytest.mark.ray
def test_diverged_trial_fails_alone_and_releases_resources(tmp_path: Path, ray_cluster: None) -> None:
    """GA with `unlearn.max_forget_loss=0.01` trips the divergence guard on its first step (its forget
    term is minus the token-mean NLL, far above 0.01 in magnitude): that trial is failed in the
    Parquet table and FAIL in Optuna, the SimNPO trial completes, the sweep exits 0, and no placement
    group or actor the sweep created is left alive."""
    import time

    path = write_sweep(
        tmp_path,
        search={
            "methods": ["ga", "simnpo"],
            "space": {"ga": {"unlearn.max_forget_loss": {"choices": [0.01]}}},
            "num_trials": 2,
            "max_concurrent_trials": 1,
            "sampler": "random",
            "seed": 0,  # the random sampler's first two asks with seed 0: simnpo, then ga
        },
    )
    groups_before, actors_before = _alive_placement_groups_and_actors()
    assert sweep.main([str(path)]) == 0

    root = results.results_root(str(tmp_path / "runs"), "citest")
    trials = {t["method"]: t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"}
    assert set(trials) == {"ga", "simnpo"}
    assert trials["simnpo"]["status"] == "completed" and trials["simnpo"]["error"] is None
    failed = trials["ga"]
    assert failed["status"] == "failed" and failed["checkpoint"] is None
    assert "at epoch 1 exceeds max_forget_loss=0.01" in failed["error"]
    with sqlite3.connect(tmp_path / "runs" / "citest" / "optuna.sqlite") as db:
        states = sorted(
            (value, state)
            for value, state in db.execute(
                "SELECT p.param_value, t.state FROM trials t JOIN trial_params p USING (trial_id) "
                "WHERE p.param_name = 'method'"
            )
        )
    # `method` is categorical: its stored value is the index into search.methods (ga 0, simnpo 1).
    assert states == [(0.0, "FAIL"), (1.0, "COMPLETE")]

    deadline = time.monotonic() + 10  # Tune removes a finished trial's placement group asynchronously
    while True:
        groups, actors = _alive_placement_groups_and_actors()
        new_groups, new_actors = groups - groups_before, set(actors) - set(actors_before)
        if (not new_groups and not new_actors) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not new_groups
    assert not new_actors, {a: actors[a] for a in new_actors}


@pytest.mark.ray
def test_every_epoch_is_evaluated_kept_and_learned_from(tmp_path: Path, ray_cluster: None) -> None:
    """`evaluation.every_epoch` with early stopping: every epoch of every trial has FQ and MU rows,
    a trial's final metrics are its last epoch's, the study holds the earlier epochs as points with
    their epoch count, and only the epochs no other epoch of the trial dominates keep weights."""
    import optuna

    from raysimnpo.maths.pareto import non_dominated_mask

    run = dict(
        SMALL_RUN,
        cache_dir=str(tmp_path / "cache"),
        unlearn=dict(SMALL_RUN["unlearn"], epochs=3),
        evaluation=dict(SMALL_RUN["evaluation"], engine="auto", every_epoch=True),
    )
    search = {
        "methods": ["simnpo"],
        "space": {
            "simnpo": {
                "method.beta": {"low": 1.0, "high": 4.0},
                "unlearn.epochs": {"choices": [2, 3]},
            }
        },
        "num_trials": 2,
        "max_concurrent_trials": 1,
        "sampler": "random",
        "early_stop": {"margin": 0.0, "min_epochs": 1},
    }
    path = write_sweep(tmp_path, run=run, search=search)
    assert sweep.main([str(path)]) == 0
    root = results.results_root(str(tmp_path / "runs"), "citest")
    trials = [t for t in results.read_table(root, "trials").to_pylist() if t["kind"] == "trial"]
    metrics = results.read_table(root, "metrics").to_pylist()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'runs' / 'citest' / 'optuna.sqlite'}")
    points = [
        t
        for t in optuna.load_study(study_name="citest", storage=storage).trials
        if t.user_attrs.get("epoch_point")
    ]
    expected_points = stopped_trials = 0
    for trial in trials:
        mine = [m for m in metrics if m["trial_id"] == trial["trial_id"]]
        per_epoch: dict[int, dict[str, float]] = {}
        for m in mine:
            if m["stage"] == "epoch":
                per_epoch.setdefault(m["epoch"], {})[m["metric"]] = m["value"]
        final = {m["metric"]: m["value"] for m in mine if m["stage"] == "final"}
        ran = sorted(per_epoch)
        planned = json.loads(trial["params_json"])["unlearn"]["epochs"]
        stopped = len(ran) < planned
        assert ran == list(range(1, len(ran) + 1)) and trial["epochs"] == len(ran)  # what the model ran
        assert all({"forget_quality", "model_utility"} <= set(v) for v in per_epoch.values())
        assert final["forget_quality"] == pytest.approx(per_epoch[ran[-1]]["forget_quality"])
        assert final["model_utility"] == pytest.approx(per_epoch[ran[-1]]["model_utility"])
        assert ("stopped_at_epoch" in final) == stopped
        values = [[per_epoch[e]["forget_quality"], per_epoch[e]["model_utility"]] for e in ran]
        front = {e for e, keep in zip(ran, non_dominated_mask(values, ["max", "max"]), strict=True) if keep}
        kept = {
            int(p.name.rsplit("-", 1)[1])
            for p in Path(trial["checkpoint"]).parent.glob(f"{trial['trial_id']}.epoch-*")
        }
        assert kept == front - {ran[-1]}  # the last epoch's weights are the trial's checkpoint
        # epochs inside the searched choices; a stopped trial's last one too (its own trial is PRUNED)
        expected_points += sum(1 for e in (ran if stopped else ran[:-1]) if e in (2, 3))
        stopped_trials += stopped
    assert len(points) == expected_points
    pruned = [
        t for t in optuna.load_study(study_name="citest", storage=storage).trials if t.state.name == "PRUNED"
    ]
    assert len(pruned) == stopped_trials
    assert {p.user_attrs["of_trial"] for p in points} <= {t["trial_id"] for t in trials}


@pytest.mark.ray
def test_a_deterministic_sweep_killed_and_resumed_ends_with_the_same_study(
    tmp_path: Path, ray_cluster: None
) -> None:
    """`search.deterministic`: two trials at a time, each evaluated every epoch and stopped early when
    dominated, the two methods taking turns. A run straight through and a run whose driver is killed
    after two trials and resumed (trials end in whatever order the machine gives; the killed run's
    running trials run again) make the same suggestions, stop the same trials and hold the same
    values, in the same order."""
    import optuna

    run = dict(
        SMALL_RUN,
        cache_dir=str(tmp_path / "cache"),  # shared: the second run reuses the prepared models
        evaluation=dict(SMALL_RUN["evaluation"], engine="auto", every_epoch=True),
    )
    search = {
        "methods": ["simnpo", "npo"],
        "space": {
            "simnpo": {
                "method.beta": {"low": 1.0, "high": 4.0},
                "unlearn.learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
                "unlearn.epochs": {"choices": [2, 3, 4]},
            },
            "npo": {
                "method.beta": {"low": 0.05, "high": 0.5, "log": True},
                "unlearn.learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
                "unlearn.epochs": {"choices": [2, 3, 4]},
            },
        },
        # Two utilities: continuous where this 2-epoch model's FQ and MU take a few values, and most
        # trials are dominated, so early stopping decides much of the study.
        "objectives": [
            {"metric": "retain_prob", "mode": "max"},
            {"metric": "world_facts_prob", "mode": "max"},
        ],
        "num_trials": 10,
        "max_concurrent_trials": 2,
        "sampler": "tpe",
        "method_choice": "round_robin",
        "early_stop": {"margin": 0.0, "min_epochs": 1},
        "deterministic": True,
    }
    path = write_sweep(tmp_path, name="straight", run=run, search=search, storage=str(tmp_path / "straight"))
    assert sweep.main([str(path)]) == 0
    path = write_sweep(tmp_path, name="killed", run=run, search=search, storage=str(tmp_path / "killed"))
    kill_once_trials_finish(path, 2, num_cpus=2)
    assert sweep.main([str(path), "--resume"]) == 0
    studies = []
    for name in ("straight", "killed"):
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name / name / 'optuna.sqlite'}")
        trials = optuna.load_study(study_name=name, storage=storage).trials
        studies.append([(t.params, t.values, t.state.name, t.user_attrs.get("epoch")) for t in trials])
    own = [t for t in studies[0] if t[3] is None]
    assert len(own) == 10 and any(t[2] == "PRUNED" for t in own)  # beside their epoch points
    assert [t[0]["method"] for t in own] == ["simnpo", "npo"] * 5  # search.method_choice: round_robin
    assert studies[0] == [t for t in studies[1] if t[2] != "FAIL"]  # FAIL: asked just before the kill
