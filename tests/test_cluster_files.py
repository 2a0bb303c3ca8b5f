"""cluster/: the Ray cluster launcher YAMLs pass Ray's autoscaler schema (what `ray up` checks
first), the KubeRay RayJob has the fields KubeRay needs, and the pieces of `make cluster-test`
(cluster/local_autoscaling.py) behave."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raysimnpo.config.sweep import TrialResources, load_sweep_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
sys.path.insert(0, str(CLUSTER))
import local_autoscaling  # noqa: E402


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def ray_up_check(config: dict) -> None:
    """What `ray up` does before it talks to a cloud: merge the provider's defaults.yaml, then
    validate against ray/autoscaler/ray-schema.json (jsonschema.ValidationError on a bad field)."""
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_yaml_passes_rays_checks(name: str) -> None:
    ray_up_check(load(name))


def test_local_yaml_passes_rays_schema() -> None:
    # fake_multinode's defaults file is not shipped in the wheel: the file is complete on its own.
    validate_config(load("local-autoscaling.yaml"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["available_node_types"]["gpu_8x_a100"]["resources"].update(GPU="eight"), "eight"),
        (lambda c: c.update(idle_timeout_minute=5), "idle_timeout_minute"),
        (lambda c: c["available_node_types"]["gpu_8x_a100"].pop("node_config"), "node_config"),
    ],
)
def test_schema_check_catches_a_bad_field(change: Callable[[dict], object], expected: str) -> None:
    config = load("aws-gpu.yaml")
    change(config)
    with pytest.raises(jsonschema.ValidationError, match=expected):
        ray_up_check(config)


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_yaml_cpu_head_and_autoscaling_gpu_workers(name: str) -> None:
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver only: no trial is scheduled on the head
    (gpu,) = [t for n, t in types.items() if n != config["head_node_type"]]
    assert gpu["resources"]["GPU"] == 8 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    assert any("pip install" in c and "-e /home/ray/raysimnpo" in c for c in config["setup_commands"])
    scheme = {"aws-gpu.yaml": "s3://", "gcp-gpu.yaml": "gs://"}[name]
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all(f"RAYSIMNPO_STORAGE={scheme}" in c for c in starts if "ray start" in c)
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])


def test_kuberay_rayjob_structure() -> None:
    job = load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m raysimnpo.sweep tofu"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = cluster["workerGroupSpecs"]
    assert groups, "a GPU worker group"
    for group in groups:
        assert group["groupName"] and 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert isinstance(group["rayStartParams"], dict)
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for template in [head["template"], *(g["template"] for g in groups)]:
        for container in template["spec"]["containers"]:
            assert container["name"] and container["image"]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env["RAYSIMNPO_STORAGE"].startswith("gs://")
            # KubeRay's schema: every resource quantity is a string
            for section in container["resources"].values():
                assert all(isinstance(v, str) for v in section.values())


def test_local_cluster_worker_type_alone_has_the_trial_resource() -> None:
    config = load("local-autoscaling.yaml")
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "trial_worker" not in head["resources"]
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert all(t["resources"].get("trial_worker", 0) >= 1 and t["min_workers"] == 0 for t in workers)
    assert 0 < config["idle_timeout_minutes"] <= 1
    sweep = load_sweep_config(str(CLUSTER / "local-sweep.yaml"))
    assert sweep.resources.custom == {"trial_worker": 1.0}
    assert sweep.search.max_concurrent_trials == sum(t["max_workers"] for t in workers)

    filled = local_autoscaling.cluster_config(CLUSTER / "local-autoscaling.yaml", 6999, 0.25)
    assert filled["provider"]["gcs_address"] == "127.0.0.1:6999" and filled["idle_timeout_minutes"] == 0.25
    validate_config(filled)
    command = local_autoscaling.head_command("ray", Path("c.yaml"), local_autoscaling.Ports(), Path("/tmp/x"))
    assert command[:4] == ["ray", "start", "--head", "--block"] and "--temp-dir=/tmp/x" in command
    assert all(f"={p}" in " ".join(command) for p in (6471, 8471, 23471, 52471))


@pytest.mark.parametrize(
    ("custom", "expected"),
    [
        ({"GPU": 1}, "resources.custom.GPU: use cpus_per_worker / gpus_per_worker"),
        ({"a": 0}, "give an amount > 0"),
    ],
)
def test_custom_resources_are_checked(custom: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        TrialResources(custom=custom)


def test_node_count_transitions_and_scale_down() -> None:
    samples = [
        {"t_s": t, "nodes": n, "worker_nodes": n - 1, "job": j}
        for t, n, j in [(0, 1, "RUNNING"), (1, 1, "RUNNING"), (5, 2, "RUNNING"), (9, 3, "RUNNING"),
                        (30, 3, "SUCCEEDED"), (50, 2, "SUCCEEDED"), (52, 1, "SUCCEEDED"), (53, 1, "SUCCEEDED")]
    ]  # fmt: skip
    kept = local_autoscaling.transitions(samples)
    assert [(s["t_s"], s["nodes"]) for s in kept] == [(0, 1), (5, 2), (9, 3), (50, 2), (52, 1), (53, 1)]
    assert local_autoscaling.scaled_up_and_down(samples)
    assert not local_autoscaling.scaled_up_and_down(samples[:5])  # still up at the end
    assert not local_autoscaling.scaled_up_and_down(samples[:2])  # never up


def test_stop_session_kills_only_its_own_session() -> None:
    mine = subprocess.Popen(
        ["bash", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(local_autoscaling.session_pids(mine.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(local_autoscaling.session_pids(mine.pid)) == 3  # bash and its two sleeps
        stopped = local_autoscaling.stop_session(mine.pid, grace_s=5)
        mine.wait(timeout=5)
        assert len(stopped) == 3 and local_autoscaling.session_pids(mine.pid) == []
        assert other.poll() is None  # another session's process is left alone
    finally:
        other.kill()
        other.wait()
