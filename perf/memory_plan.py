"""The resource plan's memory estimate against measured peaks on CPU (`raysimnpo.training.resource_plan`).

For smollm2-135m (its shipped config, randomly initialised: memory does not depend on the weights'
values) and the default sweep's `tiny` model, in float32 on CPU as a CPU sweep runs them, three
phases are run for real and measured:

* fine-tune: one AdamW step of `training.train` on a batch of `batch` sequences of `length` tokens;
* unlearn: one SimNPO step (forget batch + retain batch, two forward passes before backward);
* inference: `scoring.score_sequences` over one batch (what reference log-probs and evaluation do).

Every sequence is exactly `length` tokens long, the plan's upper bound. Measured: the peak of CPU
tensor memory while the phase runs, model construction included (torch.profiler's allocator
events), and the peak RSS above the RSS before the model was built (VmHWM after a reset). Printed
as a Markdown table with the ratio estimate / measured; saved to perf/results/memory_plan.json.

    .venv/bin/python perf/memory_plan.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from raysimnpo.config.base import TrainSettings  # noqa: E402
from raysimnpo.data.formatting import EncodedExample  # noqa: E402
from raysimnpo.maths.logprobs import IGNORE_INDEX  # noqa: E402
from raysimnpo.methods import SimNPOParams  # noqa: E402
from raysimnpo.models import TinyModelConfig  # noqa: E402
from raysimnpo.training import resource_plan  # noqa: E402
from raysimnpo.training.loop import UnlearnInputs, train  # noqa: E402
from raysimnpo.training.scoring import score_sequences  # noqa: E402

# The default sweep's tiny model (sweeps/tofu.yaml) with its largest vocabulary.
TINY = TinyModelConfig(
    hidden_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=256,
    tie_word_embeddings=True,
)
CASES: dict[str, dict[str, int]] = {
    # model -> batch and length of each phase (smollm2 kept short: one fp32 step takes seconds here)
    "smollm2-135m": {"batch": 4, "length": 64, "inference_batch": 8},
    "tiny": {"batch": 16, "length": 160, "inference_batch": 64},
}


def model_config(name: str) -> Any:
    if name == "tiny":
        return resource_plan.model_config("tiny", TINY)[0]
    data = json.loads((resource_plan.CONFIG_DIR / resource_plan.SHIPPED_CONFIGS[name]).read_text())
    return AutoConfig.for_model(**data)


def examples(n: int, length: int, vocab: int, seed: int) -> list[EncodedExample]:
    """`n` sequences of exactly `length` tokens; the first quarter is the prompt (masked)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        prompt = length // 4
        out.append(EncodedExample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def run_phase(name: str, phase: str, sizes: dict[str, int]) -> dict[str, Any]:
    config = model_config(name)
    batch, length = sizes["batch"], sizes["length"]
    forget = examples(batch, length, config.vocab_size, 0)
    retain = examples(batch, length, config.vocab_size, 1)
    settings = TrainSettings(epochs=1, batch_size=batch, learning_rate=1e-5, max_length=length)

    def work() -> None:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if phase == "fine-tune":
            train(model, settings, pad_id=0, seed=0, examples=forget)
        elif phase == "unlearn":
            inputs = UnlearnInputs(forget=forget, retain=retain)
            train(model, settings, pad_id=0, seed=0, unlearn=inputs, params=SimNPOParams(beta=2.5))
        else:
            with torch.no_grad():
                score_sequences(
                    model.eval(),
                    examples(sizes["inference_batch"], length, config.vocab_size, 2),
                    sizes["inference_batch"],
                    0,
                )

    harness.trim_heap()
    harness.reset_peak_rss()
    before = harness.rss_bytes()
    seconds, _ = harness.timed(work)
    rss_peak = harness.peak_rss_bytes() - before
    harness.trim_heap()
    tensor_peak, _ = harness.tensor_allocation_peak(work)

    shape = resource_plan.model_shape(name, TINY if name == "tiny" else None)
    if phase == "inference":
        estimate = resource_plan.inference_memory(
            phase, shape, batch_size=sizes["inference_batch"], max_length=length, weight_bytes=4
        )
    else:
        estimate = resource_plan.training_memory(
            phase,
            shape,
            devices=1,
            batch_size=batch,
            max_length=length,
            passes=2 if phase == "unlearn" else 1,
            compute_bytes=4,
        )
    return {
        "model": name,
        "phase": phase,
        "parameters": shape.parameters,
        "batch": sizes["inference_batch"] if phase == "inference" else batch,
        "length": length,
        "estimate_bytes": estimate.total,
        "estimate_parts": {
            "weights": estimate.weights,
            "gradients": estimate.gradients,
            "optimizer": estimate.optimizer,
            "activations": estimate.activations,
        },
        "tensor_peak_bytes": tensor_peak,
        "rss_peak_bytes": rss_peak,
        "ratio_to_tensor_peak": estimate.total / tensor_peak,
        "ratio_to_rss_peak": estimate.total / rss_peak,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    harness.set_threads(args.threads)
    rows = [
        run_phase(name, phase, sizes)
        for name, sizes in CASES.items()
        for phase in ("fine-tune", "unlearn", "inference")
    ]
    mb = 1e6
    print(
        harness.markdown_table(
            [
                "model",
                "phase",
                "batch x length",
                "estimate MB",
                "tensor peak MB",
                "RSS peak MB",
                "estimate / tensor peak",
                "estimate / RSS peak",
            ],
            [
                [
                    r["model"],
                    r["phase"],
                    f"{r['batch']} x {r['length']}",
                    r["estimate_bytes"] / mb,
                    r["tensor_peak_bytes"] / mb,
                    r["rss_peak_bytes"] / mb,
                    r["ratio_to_tensor_peak"],
                    r["ratio_to_rss_peak"],
                ]
                for r in rows
            ],
        )
    )
    path = harness.write_result(
        "memory_plan",
        {
            "machine": harness.machine(),
            "threads": args.threads,
            "dtype": "float32 (CPU)",
            "assumptions": {
                "activation_elements_per_token_layer": f"{resource_plan.ACTIVATION_ELEMENTS_HIDDEN} x hidden + "
                f"{resource_plan.ACTIVATION_ELEMENTS_MLP} x intermediate",
                "logit_bytes": resource_plan.LOGIT_BYTES,
            },
            "rows": rows,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
