"""`make gpu-check`: what a user with GPUs runs once before a long sweep, on every visible GPU.

1. memory: smollm2-135m loaded in bf16 on GPU 0 runs one fine-tuning step, one SimNPO step (fp32
   master weights, bf16 compute) and one scoring batch; torch.cuda.max_memory_allocated against the
   resource plan's estimate of the same phase (`raysimnpo.resource_plan`).
2. FSDP2 on NCCL in bf16 and world-size invariance: the same SimNPO unlearning of smollm2-135m with
   `orchestration.trainer.unlearn_with_torch_trainer` on 1 GPU (unsharded) and on all N GPUs (FSDP2,
   MixedPrecisionPolicy bf16 over fp32 shards): per-epoch losses and the weight change must agree
   within bf16 tolerance. The GPUs' used memory (nvidia-smi, polled) during the N-GPU run against
   the plan's unlearning-trial estimate.
3. A 2-trial sweep of smollm2-135m on generated TOFU data (`python -m raysimnpo.sweep tofu`, every
   GPU for the trial's workers), which prints its resource plan; both trials must complete.

Prints one line per check and saves benchmarks/results/gpu_check.json. Exit 0 when every check
passes, 1 otherwise or when no GPU is visible (nothing is run then). smollm2-135m comes from
`<cache>/models/smollm2-135m` (`python -m raysimnpo.models import smollm2-135m`; done here when missing).

    .venv/bin/python benchmarks/gpu_check.py [--skip-sweep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

from raysimnpo import resource_plan  # noqa: E402
from raysimnpo.cache import default_cache_dir  # noqa: E402
from raysimnpo.config import DataSettings, ModelSettings, RunConfig, TrainSettings  # noqa: E402
from raysimnpo.methods import SimNPOParams  # noqa: E402

LOSS_TOLERANCE = 0.02
"""Relative difference of 1-GPU and N-GPU epoch losses: both compute in bf16, in different orders."""
WEIGHT_TOLERANCE = 0.1
"""‖Δ_N − Δ_1‖ / ‖Δ_1‖ of the weight change, after saving both in bf16."""
BATCH, LENGTH = 20, 128  # forget05 of the default generated set: 60 forget and 940 retain QA


def no_gpu_message() -> str | None:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None
    return (
        "gpu-check: no CUDA GPU is visible here (torch.cuda.is_available() is False), so nothing was run; "
        "it checks FSDP2 on NCCL, 1-GPU vs all-GPU invariance, a 2-trial sweep and GPU memory against the "
        "resource plan: run `make gpu-check` on a machine with NVIDIA GPUs"
    )


def smollm2_folder(cache: Path) -> Path:
    from raysimnpo.models import SMOLLM2_FOLDER, import_smollm2

    folder = cache / "models" / SMOLLM2_FOLDER
    if not (folder / "config.json").is_file():
        import_smollm2(cache)
    return folder


def run_config(cache: Path) -> RunConfig:
    return RunConfig(
        seed=0,
        device="cuda",
        cache_dir=str(cache),
        data=DataSettings(forget_split="forget05"),
        model=ModelSettings(name="smollm2-135m", dtype="bfloat16"),
        unlearn=TrainSettings(
            epochs=2, learning_rate=1e-4, batch_size=BATCH, max_length=LENGTH, warmup_epochs=0
        ),
        method=SimNPOParams(beta=2.5, retain_weight=0.1),
    )


# ------------------------------------------------------------------------------------- 1. memory


def measure_memory(folder: Path, config: RunConfig) -> list[dict[str, Any]]:
    """Peak allocated GPU memory of each phase on GPU 0 against the plan's estimate."""
    from memory_plan import examples
    from transformers import AutoModelForCausalLM

    from raysimnpo.scoring import score_sequences
    from raysimnpo.training import UnlearnInputs, train

    shape = resource_plan.model_shape(str(folder))
    rows = []
    for phase in ("fine-tune", "unlearn", "inference"):
        forget = examples(BATCH, LENGTH, shape.vocab, 0)
        retain = examples(BATCH, LENGTH, shape.vocab, 1)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda:0")
        settings = config.unlearn.model_copy(update={"epochs": 1})
        if phase == "fine-tune":
            train(model, settings, pad_id=0, seed=0, examples=forget)
            estimate = resource_plan.training_memory(
                phase, shape, devices=1, batch_size=BATCH, max_length=LENGTH
            )
        elif phase == "unlearn":
            train(
                model, settings, pad_id=0, seed=0, unlearn=UnlearnInputs(forget, retain), params=config.method
            )
            estimate = resource_plan.training_memory(
                phase, shape, devices=1, batch_size=BATCH, max_length=LENGTH, passes=2
            )
        else:
            with torch.no_grad():
                score_sequences(model.eval(), forget, BATCH, 0)
            estimate = resource_plan.inference_memory(phase, shape, batch_size=BATCH, max_length=LENGTH)
        torch.cuda.synchronize(0)
        measured = torch.cuda.max_memory_allocated(0)
        del model
        rows.append(
            {
                "phase": phase,
                "estimate_bytes": estimate.total,
                "measured_peak_allocated_bytes": measured,
                "ratio": estimate.total / measured,
            }
        )
    return rows


# ------------------------------------------------------------------ 2. FSDP2 and world-size invariance


class GpuMemoryPoll:
    """Highest memory.used of each GPU (nvidia-smi, every 0.5 s) while the block runs."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                index, used = (part.strip() for part in line.split(","))
                self.peaks[int(index)] = max(self.peaks.get(int(index), 0.0), float(used) * 2**20)
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def invariance(folder: Path, config: RunConfig, gpus: int, scratch: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from raysimnpo.orchestration.trainer import unlearn_with_torch_trainer

    def unlearn(workers: int) -> tuple[dict[str, Any], dict[str, torch.Tensor], float]:
        started = time.perf_counter()
        out = unlearn_with_torch_trainer(
            config,
            str(folder),
            str(scratch / f"unlearned-{workers}"),
            num_workers=workers,
            use_gpu=True,
            reference_nll=None,
            storage_path=str(scratch / "ray"),
            name=f"gpu-check-{workers}",
        )
        weights = {k: v.float() for k, v in load_file(Path(out["output_path"]) / "model.safetensors").items()}
        return out, weights, time.perf_counter() - started

    original = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    one, one_weights, one_seconds = unlearn(1)
    result: dict[str, Any] = {"gpus": gpus, "seconds_1_gpu": one_seconds, "epochs_1_gpu": one["epochs"]}
    if gpus < 2:
        result["skipped"] = "one GPU visible: world-size invariance needs at least 2"
        return result
    with GpuMemoryPoll() as poll:
        many, many_weights, many_seconds = unlearn(gpus)
    keys = sorted(original)
    delta_one = torch.cat([(one_weights[k] - original[k]).flatten() for k in keys])
    delta_many = torch.cat([(many_weights[k] - original[k]).flatten() for k in keys])
    loss_gaps = [
        abs(a[name] - b[name]) / max(abs(a[name]), 1e-8)
        for a, b in zip(one["epochs"], many["epochs"], strict=True)
        for name in ("forget_loss", "retain_loss")
    ]
    shape = resource_plan.model_shape(str(folder))
    estimate = resource_plan.training_memory(
        "unlearning trial", shape, devices=gpus, batch_size=BATCH, max_length=LENGTH, passes=2
    )
    peak = max(poll.peaks.values()) if poll.peaks else None
    weight_gap = float((delta_many - delta_one).norm() / delta_one.norm())
    result |= {
        "seconds_n_gpus": many_seconds,
        "epochs_n_gpus": many["epochs"],
        "max_relative_loss_gap": max(loss_gaps),
        "relative_weight_change_gap": weight_gap,
        "passed": max(loss_gaps) <= LOSS_TOLERANCE and weight_gap <= WEIGHT_TOLERANCE,
        "trial_estimate_bytes_per_gpu": estimate.total,
        "nvidia_smi_peak_used_bytes_per_gpu": poll.peaks,
        "ratio_estimate_to_peak": estimate.total / peak if peak else None,
    }
    return result


# ------------------------------------------------------------------------------ 3. a 2-trial sweep


def sweep_overrides(gpus: int) -> list[str]:
    """`--set`s that turn the default sweep into 2 short trials of smollm2-135m on `gpus` GPUs."""
    settings = [
        "run.model.name=smollm2-135m",
        "run.model.dtype=bfloat16",
        "run.device=cuda",
        "run.data.forget_split=forget05",
        "run.data.train_on_utility_splits=false",
        "run.prepare.epochs=1",
        "run.prepare.learning_rate=1e-5",
        f"run.unlearn.batch_size={BATCH}",
        "run.evaluation.max_new_tokens=16",
        "run.evaluation.generation_limit=20",
        "search.num_trials=2",
        f"resources.workers={gpus}",
        "resources.gpus_per_worker=1",
        "relearn=null",
    ]
    for method in ("simnpo", "npo"):
        settings += [
            f"search.space.{method}.unlearn.epochs.low=1",
            f"search.space.{method}.unlearn.epochs.high=2",
            f"search.space.{method}.unlearn.learning_rate.low=1e-5",
            f"search.space.{method}.unlearn.learning_rate.high=5e-5",
        ]
    return settings


def two_trial_sweep(gpus: int, scratch: Path) -> dict[str, Any]:
    from raysimnpo import results

    command = [sys.executable, "-m", "raysimnpo.sweep", "tofu", "--storage", str(scratch / "runs")]
    for item in sweep_overrides(gpus):
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    completed = 0
    if done.returncode == 0:
        trials = results.read_table(results.results_root(str(scratch / "runs"), "tofu"), "trials").to_pylist()
        completed = sum(1 for t in trials if t["kind"] == "trial" and t["status"] == "completed")
    return {
        "returncode": done.returncode,
        "seconds": seconds,
        "completed_trials": completed,
        "plan": [line for line in output.splitlines() if line.startswith("[plan]")],
        "output_tail": output.splitlines()[-20:],
        "passed": done.returncode == 0 and completed == 2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the 2-trial sweep")
    args = parser.parse_args()
    message = no_gpu_message()
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    gpus = torch.cuda.device_count()
    cache = Path(os.environ.get("RAYSIMNPO_CACHE") or default_cache_dir())
    folder = smollm2_folder(cache)
    config = run_config(cache)
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print(f"gpu-check: {gpus} x {names[0]}")
    report: dict[str, Any] = {"machine": harness.machine(), "gpus": names}

    report["memory"] = measure_memory(folder, config)
    for row in report["memory"]:
        print(
            f"  memory {row['phase']:<10} estimate {row['estimate_bytes'] / 1e9:6.2f} GB, measured peak "
            f"{row['measured_peak_allocated_bytes'] / 1e9:6.2f} GB (ratio {row['ratio']:.2f})"
        )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        scratch = Path(tmp)
        harness.start_ray(num_cpus=os.cpu_count() or 2)
        import ray

        try:
            report["invariance"] = invariance(folder, config, gpus, scratch)
        finally:
            ray.shutdown()
        inv = report["invariance"]
        if "skipped" in inv:
            print(f"  invariance: skipped ({inv['skipped']})")
        else:
            print(
                f"  FSDP2 on {gpus} GPUs vs 1: loss gap {inv['max_relative_loss_gap']:.3%}, weight-change gap "
                f"{inv['relative_weight_change_gap']:.3%} -> {'ok' if inv['passed'] else 'FAILED'}"
            )
        if not args.skip_sweep:
            report["sweep"] = two_trial_sweep(gpus, scratch)
            print("\n".join(f"  {line}" for line in report["sweep"]["plan"]))
            print(
                f"  2-trial sweep: {report['sweep']['completed_trials']} completed in "
                f"{report['sweep']['seconds']:.0f} s -> {'ok' if report['sweep']['passed'] else 'FAILED'}"
            )
    path = harness.write_result("gpu_check", report)
    print(f"saved {path}")
    passed = report["invariance"].get("passed", True) and report.get("sweep", {}).get("passed", True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
