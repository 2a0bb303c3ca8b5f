"""Where a sweep runs: its storage (a folder or a filesystem URI) and the Ray cluster it starts or joins.

The checks here run before Ray starts and import no Ray (ray is imported when it is started): the
form and reachability of the cluster address, the CPUs of a local Ray, and whether the cluster can
ever hold one trial of the sweep.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserInputError
from ..results.storage import Storage, check_writable, open_storage

if TYPE_CHECKING:
    from ..config.sweep import SweepConfig

DEFAULT_ADDRESS_TIMEOUT_S = 5.0
# host:port of a head's GCS (or ray://host:port, the Ray Client); IPv6 hosts in brackets.
_ADDRESS = re.compile(
    r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d+)$"
)
_RAY_OWN_ADDRESSES = ("auto", "local")  # Ray resolves these itself (a running local cluster / a new one)


def check_storage(storage: str) -> Storage:
    """The storage (a local folder or a pyarrow filesystem URI: s3://, gs://, ...) must be
    reachable and writable; checked before Ray starts."""
    location = open_storage(storage)
    check_writable(location)
    return location


@dataclass(frozen=True)
class RayTarget:
    """The cluster a command will use: `address` to join (None: start a local Ray), where that
    address came from (for messages), and the CPUs of a local Ray."""

    address: str | None
    source: str
    num_cpus: int | None


def ray_target(address: str | None, num_cpus: str | None, timeout_s: float | None) -> RayTarget:
    """Check `--address` (else RAY_ADDRESS), `--num-cpus` and `--address-timeout` before anything
    else starts: a positive whole number of CPUs, an address of the form host:port that answers
    within the timeout (`auto` and `local` are Ray's own)."""
    wait = DEFAULT_ADDRESS_TIMEOUT_S if timeout_s is None else timeout_s
    if not wait > 0 or wait == float("inf"):
        raise UserInputError(f"--address-timeout: {timeout_s}; give a number of seconds > 0")
    cpus = None
    if num_cpus is not None:
        try:
            cpus = int(num_cpus)
        except ValueError:
            cpus = 0
        if cpus <= 0:
            raise UserInputError(
                f"--num-cpus: {num_cpus!r}; give a positive whole number of CPUs for the local Ray "
                f"(this machine has {os.cpu_count()})"
            )
    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return RayTarget(None, "local", cpus)
    if address not in _RAY_OWN_ADDRESSES:
        _check_reachable(address, source, wait)
    return RayTarget(address, source, None)


def _check_reachable(address: str, source: str, wait: float) -> None:
    match = _ADDRESS.match(address.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise UserInputError(
            f"{source}: {address!r} is not a Ray address; allowed: host:port of the head "
            "(e.g. 10.0.0.5:6379), ray://host:port, auto"
        )
    host = match["host"].strip("[]")
    try:
        socket.create_connection((host, port), timeout=wait).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserInputError(
            f"{source}: no Ray head answers at {host}:{port} within {wait:g} s ({reason}); start the cluster "
            "or fix the address (a slow network: --address-timeout SECONDS)"
        ) from None


@dataclass(frozen=True)
class TrialDemand:
    """What one trial holds at once, and what the prepare stage (Original and Retrain) needs."""

    cpus: float
    gpus: float
    custom: dict[str, float]
    prepare_gpus: float


def trial_demand(sweep: SweepConfig) -> TrialDemand:
    """The resources of one trial as tuner.trial_resources and the TorchTrainer ask for them."""
    r = sweep.resources
    cpus = 0.01 + r.workers * r.cpus_per_worker if trials_use_torch_trainer(sweep) else r.cpus_per_worker
    return TrialDemand(
        cpus, r.workers * r.gpus_per_worker, dict(r.custom), 1.0 if r.gpus_per_worker > 0 else 0.0
    )


def local_gpus() -> int:
    """The GPUs a local Ray would see: CUDA_VISIBLE_DEVICES when set, else the NVIDIA device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia*") if p.name[len("nvidia") :].isdigit()])


def check_local_capacity(demand: TrialDemand, num_cpus: int | None) -> None:
    """A local Ray gets `num_cpus` (default: every core) and the machine's GPUs, and no custom
    resources; a sweep whose trial cannot fit would wait forever."""
    cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
    _check_fits(demand, {"CPU": float(cpus), "GPU": float(local_gpus())}, "a local Ray on this machine")


def _check_fits(demand: TrialDemand, have: dict[str, float], where: str) -> None:
    cpu_note = " (--num-cpus)" if where.startswith("a local") else ""
    if demand.cpus > have.get("CPU", 0.0) + 1e-9:
        raise UserInputError(
            f"resources: a trial needs {demand.cpus:g} CPUs (workers x cpus_per_worker), but {where} has "
            f"{have.get('CPU', 0.0):g}{cpu_note}; lower resources.cpus_per_worker or resources.workers"
        )
    gpus_needed = max(demand.gpus, demand.prepare_gpus)
    if gpus_needed > have.get("GPU", 0.0) + 1e-9:
        raise UserInputError(
            f"resources: a trial needs {gpus_needed:g} GPUs (workers x gpus_per_worker; preparing needs 1), "
            f"but {where} has {have.get('GPU', 0.0):g}; set resources.gpus_per_worker=0 and run.device=auto "
            "or cpu, or join a cluster with GPUs"
        )
    for name, amount in demand.custom.items():
        if amount > have.get(name, 0.0) + 1e-9:
            raise UserInputError(
                f"resources.custom.{name}: a trial needs {amount:g}, but {where} has "
                f"{have.get(name, 0.0):g}; join a cluster whose nodes have it (--address) or remove it"
            )


def start_ray(address: str | None, num_cpus: int | None, demand: TrialDemand | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS, which `ray job submit` sets), else start a local Ray; True
    when this call connected (so the caller disconnects), False when Ray was already up. With a
    `demand`, a joined cluster that cannot hold one trial and has no autoscaler to grow is left
    again with one UserInputError (what it has, what a trial needs).

    The workers' output is forwarded to the driver (`log_to_driver`), whose descriptors a quiet
    console points at the run's log file (raysimnpo.cli.console)."""
    import ray

    if ray.is_initialized():  # a notebook or a test session that already started Ray
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        if demand is not None:
            have = {k: float(v) for k, v in ray.cluster_resources().items()}
            try:
                _check_fits(demand, have, f"the cluster at {address}")
            except UserInputError:
                if not _autoscales():
                    ray.shutdown()
                    raise
        return True
    # A local Ray of our own; cap the object store (30% of RAM by default) for small machines.
    ray.init(num_cpus=num_cpus, object_store_memory=512 * 1024**2, include_dashboard=False)
    return True


def _autoscales() -> bool:
    """Whether the joined cluster runs an autoscaler (it reports its status to the GCS), which may
    add the nodes a trial needs."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        return _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) is not None
    except Exception:  # an internal API that moved: assume it may grow, as before this check
        return True


def stop_ray() -> None:
    import ray

    ray.shutdown()


def trials_use_torch_trainer(sweep: SweepConfig) -> bool:
    """Whether a trial unlearns on TorchTrainer workers (`trial.unlearn`): several workers, or GPUs."""
    r = sweep.resources
    return r.workers > 1 or r.gpus_per_worker > 0
