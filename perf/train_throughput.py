"""Training throughput: tokens/s and model FLOP utilisation of forward+backward (issue 8).

MFU = (6 · N · tokens / seconds) / peak, with N the model's distinct parameters (a tied embedding
counted once: it is the LM head's matmul) and 6·N FLOPs per token for forward (2N) + backward (4N);
attention-score FLOPs are not counted (the usual convention; they add 12·L·T·d per token: 3.3% of
6N for smollm2-135m at T=128, 14% for tiny). The peak is this machine's fp32 matmul rate, measured in
the same run and at the same thread count with large `torch.mm` calls; peak and models alternate
round by round, and MFU is the median of the per-round ratios.

The batch is dense (no padding): the default run's QA texts (sweeps/tofu.yaml's generated TOFU
`full` split), tokenized, concatenated and cut into rows of T tokens, every token a target. One
forward+backward is the package's fine-tuning loss (`sequence_nll` -> `retain_nll_loss`); the
training-step columns add gradient clipping and AdamW as `raysimnpo.training.loop.train` does.

    .venv/bin/python perf/train_throughput.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import torch

from raysimnpo.config.run import load_run_config
from raysimnpo.maths import objectives
from raysimnpo.maths.logprobs import sequence_nll
from raysimnpo.models import SMOLLM2_FOLDER
from raysimnpo.recipes.workspace import initial_model, workspace

NAME = "train_throughput"
TARGET_MFU = {"smollm2-135m": 0.5}
SHAPES = {"tiny": (32, 128), "smollm2-135m": (4, 128)}  # (batch, tokens per row)
MATMUL_N = 2048


def matmul_peak(n: int = MATMUL_N, calls: int = 6) -> float:
    """fp32 FLOP/s of `calls` n×n @ n×n torch.mm (2n³ each), after one warm-up call."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    seconds, _ = harness.timed(lambda: [torch.mm(a, b, out=out) for _ in range(calls)])
    return 2 * n**3 * calls / seconds


def dense_batch(preset: str, batch: int, length: int) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """The preset's model (tiny: built from sweeps/tofu.yaml's settings; smollm2-135m: the
    imported checkpoint) and a [batch, length] block of the run's tokenized QA text."""
    overrides = ["model.name=smollm2-135m"] if preset != "tiny" else []
    config = load_run_config("tofu", overrides)
    ws = workspace(config)
    loaded = initial_model(config, ws.data.corpus())
    stream: list[int] = []
    for row in ws.data.full:
        stream += list(loaded.tokenizer(f"{row['question']} {row['answer']}")["input_ids"])
        stream.append(int(loaded.tokenizer.eos_token_id))
        if len(stream) >= batch * length:
            break
    ids = torch.tensor(stream[: batch * length]).view(batch, length)
    model = loaded.model.train()
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": model.get_input_embeddings().weight.numel(),
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "layers": int(model.config.num_hidden_layers),
        "hidden_size": int(model.config.hidden_size),
        "dtype": str(next(model.parameters()).dtype),
        "batch": batch,
        "length": length,
    }
    return model, ids, info


class Trainer:
    """Forward+backward of the fine-tuning loss, then clipping and AdamW, timed apart."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor) -> None:
        self.model, self.ids = model, ids
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)

    def forward_backward(self) -> float:
        logits = self.model(input_ids=self.ids).logits
        nll, n = sequence_nll(logits.float(), self.ids)
        loss = objectives.retain_nll_loss(nll, n)
        loss.backward()
        return float(loss.item())

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    args = parser.parse_args()
    harness.set_threads(args.threads)
    machine = harness.machine()

    presets = [
        p
        for p in args.models
        if p == "tiny" or (Path(load_run_config("tofu").cache_dir) / "models" / SMOLLM2_FOLDER).is_dir()
    ]
    trainers: dict[str, Trainer] = {}
    info: dict[str, dict[str, Any]] = {}
    for preset in presets:
        model, ids, info[preset] = dense_batch(preset, *SHAPES[preset])
        trainers[preset] = Trainer(model, ids)
        # Warm-up: allocator, kernels, AdamW state.
        trainers[preset].forward_backward()
        trainers[preset].optimizer_step()

    peaks: list[float] = []
    fb: dict[str, list[float]] = {p: [] for p in presets}
    opt: dict[str, list[float]] = {p: [] for p in presets}
    mfu: dict[str, list[float]] = {p: [] for p in presets}
    for _ in range(args.rounds):
        peak = matmul_peak()
        peaks.append(peak)
        for preset in presets:
            trainer = trainers[preset]
            # Repeat small steps up to ~1 s so timer resolution and Python noise do not dominate.
            reps = 1
            while True:
                fb_seconds, _ = harness.timed(functools.partial(repeat, trainer.forward_backward, reps))
                if fb_seconds > 1.0 or reps >= 64:
                    break
                trainer.optimizer.zero_grad(set_to_none=True)
                reps *= 4
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.forward_backward()
            opt_seconds, _ = harness.timed(trainer.optimizer_step)
            fb[preset].append(fb_seconds / reps)
            opt[preset].append(opt_seconds)
            flops = 6 * info[preset]["parameters"] * trainer.ids.numel()
            mfu[preset].append(flops / (fb_seconds / reps) / peak)

    table = []
    summary: dict[str, Any] = {}
    for preset in presets:
        tokens = trainers[preset].ids.numel()
        n = info[preset]["parameters"]
        fb_s, opt_s = harness.median(fb[preset]), harness.median(opt[preset])
        step_mfu = harness.median(
            [6 * n * tokens / (f + o) / p for f, o, p in zip(fb[preset], opt[preset], peaks, strict=True)]
        )
        summary[preset] = {
            "model": info[preset],
            "forward_backward_seconds": fb[preset],
            "optimizer_seconds": opt[preset],
            "tokens_per_second_forward_backward": tokens / fb_s,
            "tokens_per_second_train_step": tokens / (fb_s + opt_s),
            "achieved_flops_forward_backward": 6 * n * tokens / fb_s,
            "mfu_forward_backward": harness.median(mfu[preset]),
            "mfu_per_round": mfu[preset],
            "mfu_train_step": step_mfu,
        }
        table.append(
            [
                preset,
                f"{n / 1e6:.2f} M",
                f"{info[preset]['batch']}×{info[preset]['length']}",
                tokens / fb_s,
                6 * n * tokens / fb_s / 1e9,
                f"{100 * harness.median(mfu[preset]):.1f}%",
                tokens / (fb_s + opt_s),
                f"{100 * step_mfu:.1f}%",
            ]
        )
    peak_median = harness.median(peaks)
    print(
        f"\nfp32 matmul peak ({MATMUL_N}×{MATMUL_N} torch.mm, {torch.get_num_threads()} threads): "
        f"median {peak_median / 1e9:.1f} GFLOP/s, max {max(peaks) / 1e9:.1f} over {args.rounds} rounds\n"
    )
    headers = [
        "model",
        "N",
        "batch",
        "fwd+bwd tokens/s",
        "fwd+bwd GFLOP/s",
        "MFU fwd+bwd",
        "train-step tokens/s",
        "MFU train step",
    ]
    print(harness.markdown_table(headers, table))
    for preset, target in TARGET_MFU.items():
        if preset in summary:
            got = summary[preset]["mfu_forward_backward"]
            print(
                f"\n{preset}: MFU {100 * got:.1f}% vs target {100 * target:.0f}%: {'met' if got >= target else 'missed'}"
            )
    result = {
        "machine": machine,
        "machine_after": {"load_average": harness.machine()["load_average"]},
        "matmul_n": MATMUL_N,
        "peak_flops": peaks,
        "peak_flops_median": peak_median,
        "models": summary,
    }
    print(f"\nwrote {harness.write_result(NAME, result)}")


if __name__ == "__main__":
    main()
