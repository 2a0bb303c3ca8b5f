"""`make cluster-test`: a short sweep on a fake multi-node autoscaling Ray cluster on this machine.

1. Starts a Ray head with the autoscaler (`RAY_FAKE_CLUSTER=1 ray start --head --block
   --autoscaling-config=cluster/local-autoscaling.yaml`, explicit ports, its own temp folder) in a
   new session of its own.
2. Submits `python -m raysimnpo.sweep cluster/local-sweep.yaml` with `ray job submit`. Its trials
   each ask for the `trial_worker` resource that only the `trial.worker` node type has, so the
   autoscaler adds worker nodes for them; when the sweep is done they sit idle and are removed
   after `idle_timeout_minutes`.
3. Samples the cluster every second (alive nodes, worker nodes, job status) from the dashboard's
   state API into `<out>/nodes.csv`, waits until the worker nodes are gone, and writes
   `<out>/summary.json`: the node count over time (changes only), the peak, the job's status and
   the sweep's result rows.
4. Stops the cluster by killing only the processes of the session it started (never `ray stop`).

Exit status 0 when the job succeeded, worker nodes were added, and all were removed again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster" / "local-autoscaling.yaml"
SWEEP_YAML = REPO / "cluster" / "local-sweep.yaml"


@dataclass(frozen=True)
class Ports:
    gcs: int = 6471
    dashboard: int = 8471
    client: int = 23471
    agent: int = 52471
    metrics: int = 6472


def cluster_config(path: Path, gcs_port: int, idle_timeout_minutes: float | None = None) -> dict[str, Any]:
    """The autoscaling config with the provider pointed at this head's GCS port."""
    config = yaml.safe_load(path.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    return config


def head_command(ray_bin: str, config_file: Path, ports: Ports, temp_dir: Path) -> list[str]:
    return [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--autoscaling-config={config_file}",
        f"--port={ports.gcs}",
        f"--dashboard-port={ports.dashboard}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={ports.client}",
        f"--dashboard-agent-listen-port={ports.agent}",
        f"--metrics-export-port={ports.metrics}",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


def session_pids(session_id: int) -> list[int]:
    """The PIDs of every live process in session `session_id` (those the head started, and the
    fake worker nodes the autoscaler started from it), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces, so split after ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def stop_session(session_id: int, grace_s: float = 15.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, to the processes of our own session only."""
    pids = session_pids(session_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(session_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while session_pids(session_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not session_pids(session_id):
            break
    return pids


def auth_headers() -> dict[str, str]:
    """Ray turns token authentication on when a token exists (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token); the dashboard's HTTP API then wants it as a bearer token (never printed)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if token is None and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(url: str, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers=auth_headers())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def alive_nodes(dashboard: str) -> list[dict[str, Any]]:
    """Alive nodes from the state API (`/api/v0/nodes`)."""
    data = get_json(f"{dashboard}/api/v0/nodes?limit=1000&detail=true")
    nodes = data["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def is_worker(node: dict[str, Any]) -> bool:
    return not node.get("is_head_node", False)


def transitions(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples where the node count changed (and the first and last): node count over time."""
    kept: list[dict[str, Any]] = []
    for s in samples:
        if not kept or s["nodes"] != kept[-1]["nodes"]:
            kept.append(s)
    if samples and kept[-1] is not samples[-1]:
        kept.append(samples[-1])
    return [
        {"t_s": s["t_s"], "nodes": s["nodes"], "worker_nodes": s["worker_nodes"], "job": s["job"]}
        for s in kept
    ]


def scaled_up_and_down(samples: list[dict[str, Any]]) -> bool:
    """Worker nodes appeared, and none was left at the end."""
    return bool(samples) and max(s["worker_nodes"] for s in samples) > 0 and samples[-1]["worker_nodes"] == 0


def job_status(dashboard: str, job_id: str) -> str:
    try:
        return str(get_json(f"{dashboard}/api/jobs/{job_id}")["status"])
    except (urllib.error.URLError, KeyError, TimeoutError, ConnectionError):
        return "UNKNOWN"


def wait_for_dashboard(dashboard: str, head: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            alive_nodes(dashboard)
            return
        except (urllib.error.URLError, KeyError, TimeoutError, ConnectionError, json.JSONDecodeError):
            time.sleep(1)
    raise RuntimeError(f"the dashboard at {dashboard} did not answer in {timeout_s:.0f} s")


def result_rows(storage: Path, sweep_name: str) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from raysimnpo import results

    root = results.results_root(str(storage), sweep_name)
    rows = results.read_table(root, "trials").to_pylist()
    keep = (
        "trial_id",
        "kind",
        "method",
        "beta",
        "gamma",
        "retain_weight",
        "status",
        "forget_quality",
        "model_utility",
    )
    return [{k: r.get(k) for k in keep} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "cluster-test"), help="where the CSV/JSON go")
    parser.add_argument(
        "--temp-dir", default=f"/tmp/raysimnpo-cluster-{os.getuid()}", help="Ray's temp folder"
    )
    parser.add_argument("--idle-timeout-minutes", type=float, default=None, help="override the YAML's")
    parser.add_argument(
        "--scale-down-timeout-s", type=float, default=240, help="wait this long for scale-down"
    )
    parser.add_argument("--job-timeout-s", type=float, default=1500)
    args = parser.parse_args(argv)

    ports = Ports()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    temp_dir = Path(args.temp_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    config_file = out / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(cluster_config(CLUSTER_YAML, ports.gcs, args.idle_timeout_minutes)))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    dashboard = f"http://127.0.0.1:{ports.dashboard}"
    env = dict(
        os.environ,
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    log = open(out / "ray-start.log", "wb")  # noqa: SIM115 - open for the head's whole life
    print(
        f"[cluster] starting the head (GCS :{ports.gcs}, dashboard {dashboard}, temp {temp_dir})", flush=True
    )
    head = subprocess.Popen(
        head_command(ray_bin, config_file, ports, temp_dir),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our own session: stop_session kills exactly what this started
    )
    samples: list[dict[str, Any]] = []
    status = "NOT SUBMITTED"
    started = time.monotonic()
    try:
        wait_for_dashboard(dashboard, head, 180)
        storage = out / "runs"
        # All "nodes" of this cluster share one disk, so the job gets the repository through
        # PYTHONPATH rather than `--working-dir`: with a working_dir, every fake node's runtime-env
        # agent unpacks it again into the same shared folder, replacing the driver's cwd under
        # it. On a real cluster use `--working-dir .` (cluster/README.md).
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
        submit = [
            ray_bin,
            "job",
            "submit",
            "--address",
            dashboard,
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--no-wait",
            "--",
            "python",
            "-m",
            "raysimnpo.sweep",
            str(SWEEP_YAML),
            "--storage",
            str(storage),
            "--set",
            f"run.cache_dir={out / 'cache'}",
        ]
        print(f"[cluster] {' '.join(submit)}", flush=True)
        submitted = subprocess.run(
            submit, env=dict(env, RAY_AUTH_MODE="token"), capture_output=True, text=True, check=False
        )
        (out / "submit.log").write_text(submitted.stdout + submitted.stderr)
        job_id = next(
            (
                w.strip("'\"")
                for line in submitted.stdout.splitlines()
                for w in line.split()
                if w.strip("'\"").startswith("raysubmit_")
            ),
            None,
        )
        if submitted.returncode != 0 or job_id is None:
            raise RuntimeError(f"ray job submit failed:\n{submitted.stdout}{submitted.stderr}")
        print(f"[cluster] job {job_id} submitted; sampling nodes every second", flush=True)
        t0 = time.monotonic()
        finished_at: float | None = None
        with open(out / "nodes.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["t_s", "nodes", "worker_nodes", "job"])
            writer.writeheader()
            while True:
                try:
                    nodes = alive_nodes(dashboard)
                except (urllib.error.URLError, KeyError, TimeoutError, ConnectionError):
                    time.sleep(1)
                    continue
                if finished_at is None:
                    status = job_status(dashboard, job_id)
                sample = {
                    "t_s": round(time.monotonic() - t0, 1),
                    "nodes": len(nodes),
                    "worker_nodes": sum(1 for n in nodes if is_worker(n)),
                    "job": status,
                }
                if not samples or (sample["nodes"], sample["job"]) != (
                    samples[-1]["nodes"],
                    samples[-1]["job"],
                ):
                    print(
                        f"[cluster] t={sample['t_s']:>6.1f}s nodes {sample['nodes']} job {status}", flush=True
                    )
                samples.append(sample)
                writer.writerow(sample)
                f.flush()
                if finished_at is None and status in {"SUCCEEDED", "FAILED", "STOPPED"}:
                    finished_at = time.monotonic()
                if finished_at is not None and sample["worker_nodes"] == 0:
                    break
                if finished_at is not None and time.monotonic() - finished_at > args.scale_down_timeout_s:
                    break
                if finished_at is None and time.monotonic() - t0 > args.job_timeout_s:
                    print("[cluster] the job ran past --job-timeout-s; stopping", flush=True)
                    break
                time.sleep(1)
        logs = subprocess.run(
            [ray_bin, "job", "logs", "--address", dashboard, job_id],
            env=dict(env, RAY_AUTH_MODE="token"),
            capture_output=True,
            text=True,
            check=False,
        )
        (out / "job.log").write_text(logs.stdout + logs.stderr)
    finally:
        stopped = stop_session(head.pid)
        log.close()
        print(f"[cluster] stopped {len(stopped)} processes of our session {head.pid}", flush=True)

    rows = result_rows(out / "runs", "cluster-local") if status == "SUCCEEDED" else []
    summary: dict[str, Any] = {
        "job_status": status,
        "wall_s": round(time.monotonic() - started, 1),
        "peak_nodes": max((s["nodes"] for s in samples), default=0),
        "peak_worker_nodes": max((s["worker_nodes"] for s in samples), default=0),
        "scaled_up_and_down": scaled_up_and_down(samples),
        "node_count_over_time": transitions(samples),
        "result_rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\nnode count over time (changes):")
    for s in summary["node_count_over_time"]:
        print(f"  t={s['t_s']:>6.1f}s  nodes {s['nodes']}  (workers {s['worker_nodes']})  job {s['job']}")
    print("\nresult rows:")
    for r in rows:
        fq = "-" if r["forget_quality"] is None else f"{r['forget_quality']:.3g}"
        mu = "-" if r["model_utility"] is None else f"{r['model_utility']:.3f}"
        print(f"  {r['trial_id']:<18}{r['kind']:<10}{r['method']:<10}{r['status']:<11}FQ {fq:<10}MU {mu}")
    print(f"\njob {status}; peak {summary['peak_worker_nodes']} worker nodes; files in {out}")
    ok = status == "SUCCEEDED" and summary["scaled_up_and_down"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
