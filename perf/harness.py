"""What every benchmark script shares (import it before torch: it sets OMP_WAIT_POLICY): the machine description, thread setup, timing statistics,
peak-memory probes, Markdown tables and the JSON result file.

The scripts are run by hand (`.venv/bin/python perf/<name>.py`), never in CI; each prints a
Markdown table and writes `perf/results/<name>.json` with the raw samples and the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The machine is shared: with OpenMP's default spin-waiting, a 2-thread kernel stalls for
# milliseconds whenever another process holds one of the two cores (measured under load ~4: 10
# fine-tuning steps of `tiny` take 27-32 s at 2 threads, 3.3-3.8 s with PASSIVE, 2.9-3.7 s at 1
# thread). Set before torch loads libgomp; an explicit OMP_WAIT_POLICY in the environment wins.
OMP_WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import transformers  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parent.parent
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def set_threads(threads: int) -> None:
    """Intra-op threads for every torch kernel (the brief's fixed thread count); one inter-op thread."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set by an earlier parallel op in this process
        torch.set_num_interop_threads(1)


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return [f for f in wanted if found and f in found.group(1).split()]


def machine() -> dict[str, Any]:
    """nproc, CPU model, torch/transformers versions, threads, and the 1/5/15-min load average:
    the machine is shared, so the load during a run is part of its result."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": OMP_WAIT_POLICY,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _status_kib(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB$", _STATUS.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(found.group(1))


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since `reset_peak_rss` (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so a later RSS delta counts new memory
    instead of memory the allocator kept from objects already dropped."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs). False when
    the kernel refuses, in which case the peak counts from process start."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (tied weights once)."""
    storages: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's state tensors (AdamW: exp_avg, exp_avg_sq and step per parameter)."""
    return sum(
        value.untyped_storage().nbytes()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def tensor_allocation_peak(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak, final) net bytes of CPU tensor memory allocated while `fn` runs, from torch.profiler's
    memory events (profile_memory=True: every allocation and free of the CPU allocator, in order).
    Tensors that existed before `fn` (weights, a frozen copy) are not included; add them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak, current


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """perf/results/<name>.json, written through a temporary file so a killed run leaves the
    previous result in place."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    partial.replace(path)
    return path


def run_cli(args: Sequence[str], label: str) -> str:
    """`python -m raysimnpo.<args>` from the repository root; returns its standard output, or ends
    the benchmark with `label` and the tail of the command's output when it fails."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(
            f"{label}: failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return done.stdout


def start_ray(num_cpus: int = 2, object_store_mib: int = 256) -> float:
    """A fresh local Ray of this script's own (never one found on the host), with free ports;
    returns the seconds ray.init took."""
    import socket

    import ray

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=object_store_mib * 1024**2,
        include_dashboard=False,
        dashboard_port=free_port(),
        _metrics_export_port=free_port(),
        log_to_driver=False,
    )
    return time.perf_counter() - started
