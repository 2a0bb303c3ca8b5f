"""Unlearning step time and peak memory per method (issue 8; the paper's Table A3 comparison).

One step is the body of `raysimnpo.training.loop.train`'s unlearning loop: `step_terms` on one forget
batch and one retain batch, the method's loss (eq. 1: L_forget + λ·L_retain), backward, gradient
clipping and AdamW. Every method gets the same forget and retain batch (drawn from the run's seed
with the package's `shuffled_batches` / `cycling_batches`) and the same starting weights.

Methods: SimNPO; NPO with cached reference NLLs (the package's path: ℓ_ref computed once by the
Original through `recipes.unlearn.unlearn_inputs`); NPO with an *online* reference model — not a package
feature, built here from public functions: a frozen copy of the model (as `train` makes for RMU)
runs the forget batch every step under no_grad, `logprobs.sequence_nll` gives ℓ_ref, and
`objectives.npo_loss` + `objectives.retain_nll_loss` make the loss — the NPO setting of the paper's
Table A3; GradDiff; IdkDPO (cached reference NLLs); RMU (frozen copy, layer-k hidden states).

Time: all methods run in one process, round-robin (the order rotates every round), the weights are
restored after every step, and the first round is warm-up; extra rounds of SimNPO and the two NPO
variants only (the ratios with targets) follow. A ratio is the median over rounds of the paired
per-round ratio, so load from other users of the machine hits both sides of a ratio alike.

Memory (two measures):
* peak tensor memory, exact and deterministic: one more step per method runs under torch.profiler
  (profile_memory=True); the running sum of its allocation/free events gives the step's allocation
  peak, to which the tensors the method keeps resident are added: weights, its AdamW state, and
  the frozen copy for online NPO and RMU;
* with --rss, peak RSS of a fresh process per method (RSS cannot be un-peaked once the allocator
  holds freed pages): VmHWM over `--rss-steps` steps (reset through /proc/self/clear_refs just
  before the first) minus VmRSS before the model is built — the whole process, allocator included.

    .venv/bin/python perf/unlearn_step.py --rss     # tiny, and smollm2-135m when imported
    .venv/bin/python perf/unlearn_step.py --models tiny --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import torch
from torch import Tensor

from raysimnpo.config.run import RunSettings, load_run_config
from raysimnpo.data.collate import pad_right
from raysimnpo.data.formatting import EncodedExample
from raysimnpo.maths import objectives
from raysimnpo.maths.logprobs import sequence_nll
from raysimnpo.methods import (
    METHODS,
    GradDiffParams,
    IdkDPOParams,
    MethodParams,
    NPOParams,
    RMUParams,
    SimNPOParams,
)
from raysimnpo.models import SMOLLM2_FOLDER
from raysimnpo.recipes.unlearn import unlearn_inputs
from raysimnpo.recipes.workspace import Workspace, initial_model, reference_examples, workspace
from raysimnpo.training import sharding
from raysimnpo.training.loop import (
    UnlearnInputs,
    cycling_batches,
    rmu_layer,
    shuffled_batches,
    step_terms,
    trainable_parameters,
)
from raysimnpo.training.scoring import score_sequences

NAME = "unlearn_step"
ROWS = ("simnpo", "npo_cached", "npo_online", "grad_diff", "idk_dpo", "rmu")
LABELS = {
    "simnpo": "SimNPO",
    "npo_cached": "NPO, cached ℓ_ref (package)",
    "npo_online": "NPO, online reference model",
    "grad_diff": "GradDiff",
    "idk_dpo": "IdkDPO (cached ℓ_ref)",
    "rmu": "RMU",
}
# The paper's Table A3 (TOFU forget05, Llama-2-7B, GPU): NPO 27 GB / 36 min, SimNPO 21 GB / 25 min.
PAPER_NPO_OVER_SIMNPO = {"time": 36 / 25, "memory": 27 / 21}
TARGET_CACHED = 1.05
# smollm2-135m on 2 CPU cores: a short max_length and a small batch keep one step to seconds.
SMOLLM2_OVERRIDES = [
    "model.name=smollm2-135m",
    "unlearn.max_length=64",
    "unlearn.batch_size=4",
    "unlearn.learning_rate=1.0e-5",
]


def preset_config(preset: str) -> RunSettings:
    """The default run (sweeps/tofu.yaml); for smollm2-135m its model and a short unlearning batch."""
    return load_run_config("tofu", SMOLLM2_OVERRIDES if preset == "smollm2-135m" else [])


def params_of(row: str) -> MethodParams:
    """Package defaults for every method (SimNPO as in sweeps/tofu.yaml)."""
    return {
        "simnpo": SimNPOParams(),
        "npo_cached": NPOParams(),
        "npo_online": NPOParams(),
        "grad_diff": GradDiffParams(),
        "idk_dpo": IdkDPOParams(),
        "rmu": RMUParams(),
    }[row]


def needs_frozen(row: str) -> bool:
    return row in ("npo_online", "rmu")


def fixed_batches(ws: Workspace) -> tuple[list[int], list[int]]:
    """The first forget batch and the first retain batch `train` would draw from the run's seed."""
    settings, seed = ws.config.unlearn, ws.config.seed
    generator = torch.Generator().manual_seed(seed)
    forget = shuffled_batches(len(ws.data.forget), settings.batch_size, generator)[0]
    retain = next(cycling_batches(len(ws.data.retain), settings.batch_size, generator))
    return forget, retain


def reference_nlls(ws: Workspace, model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """ℓ_ref of the forget answers and of their refusals under the Original (what NPO/IdkDPO cache)."""
    forget, refusals = reference_examples(ws)
    batch = ws.config.evaluation.batch_size
    return (
        score_sequences(model, forget, batch, ws.pad_id)[0].tolist(),  # type: ignore[arg-type]
        score_sequences(model, refusals, batch, ws.pad_id)[0].tolist(),  # type: ignore[arg-type]
    )


def control_vector(model: torch.nn.Module, params: MethodParams, seed: int) -> Tensor:
    """RMU's forget target c·u (the method's `forget_target` hook), u drawn from the seed."""
    target = METHODS[params.name].forget_target
    assert target is not None
    return target(model, params, torch.Generator().manual_seed(seed))


def online_reference_nll(
    frozen: torch.nn.Module, forget: list[EncodedExample], index: list[int], pad_id: int
) -> Tensor:
    """ℓ_ref of the forget batch from a frozen copy of the Original, every step (online NPO)."""
    batch = pad_right([forget[i] for i in index], pad_id)
    with torch.no_grad():
        logits = frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_nll(logits.float(), batch["labels"])[0]


@dataclass
class Stepper:
    """Everything one method's steps need; `step()` is one iteration of `train`'s unlearning loop."""

    row: str
    model: torch.nn.Module
    params: MethodParams
    inputs: UnlearnInputs
    forget_index: list[int]
    retain_index: list[int]
    pad_id: int
    frozen: torch.nn.Module | None
    control: Tensor | None
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    max_grad_norm: float

    def step(self) -> float:
        if self.row == "npo_online":
            assert self.frozen is not None and isinstance(self.params, NPOParams)
            ref_nll = online_reference_nll(
                self.frozen, list(self.inputs.forget), self.forget_index, self.pad_id
            )
            # GradDiff's terms are exactly NPO's minus the cached ℓ_ref: the forget and retain passes.
            terms = step_terms(
                self.model,
                GradDiffParams(),
                self.inputs,
                self.forget_index,
                self.retain_index,
                self.pad_id,
                None,
                None,
            )
            assert terms.retain_nll is not None and terms.retain_tokens is not None
            forget_term = objectives.npo_loss(terms.forget_nll, ref_nll, self.params.beta)
            retain_term: Tensor | None = objectives.retain_nll_loss(terms.retain_nll, terms.retain_tokens)
            weight = self.params.retain_weight
        else:
            terms = step_terms(
                self.model,
                self.params,
                self.inputs,
                self.forget_index,
                self.retain_index,
                self.pad_id,
                self.frozen,
                self.control,
            )
            terms = sharding.gather_step_terms(terms)
            method = METHODS[self.params.name]
            forget_term, retain_term = method.loss(terms, self.params)
            weight = method.retain_weight(self.params)
        loss = forget_term if retain_term is None else forget_term + weight * retain_term
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item())


def make_stepper(
    row: str,
    ws: Workspace,
    model: torch.nn.Module,
    reference: tuple[list[float], list[float]],
    frozen: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Stepper:
    """A method's inputs through the package's `unlearn_inputs` (refusals and cached ℓ_ref where the
    method needs them; online NPO gets GradDiff's inputs: forget and retain only)."""
    config = ws.config
    params = params_of(row)
    inputs = unlearn_inputs(ws, GradDiffParams() if row == "npo_online" else params, None, reference)
    forget_index, retain_index = fixed_batches(ws)
    trainable = trainable_parameters(model, params)
    if optimizer is None:
        optimizer = torch.optim.AdamW(
            trainable, lr=config.unlearn.learning_rate, weight_decay=config.unlearn.weight_decay
        )
    control = control_vector(model, params, config.seed) if isinstance(params, RMUParams) else None
    if isinstance(params, RMUParams):
        rmu_layer(model, params)  # checks the layer exists
    return Stepper(
        row,
        model,
        params,
        inputs,
        forget_index,
        retain_index,
        ws.pad_id,
        frozen if needs_frozen(row) else None,
        control,
        optimizer,
        trainable,
        config.unlearn.max_grad_norm,
    )


def batch_shape(ws: Workspace) -> dict[str, Any]:
    forget, retain = fixed_batches(ws)
    f = [ws.encode([ws.data.forget[i]], ws.config.unlearn.max_length)[0] for i in forget]
    r = [ws.encode([ws.data.retain[i]], ws.config.unlearn.max_length)[0] for i in retain]
    return {
        "batch_size": len(forget),
        "forget_padded_length": max(len(e.input_ids) for e in f),
        "retain_padded_length": max(len(e.input_ids) for e in r),
        "forget_answer_tokens": sum(e.n_targets for e in f),
    }


# ------------------------------------------------------------------------------ time and tensors

FOCUS = ("simnpo", "npo_cached", "npo_online")  # the rows with targets get extra paired rounds


def time_steps(
    ws: Workspace,
    model: torch.nn.Module,
    reference: tuple[list[float], list[float]],
    rows: list[str],
    rounds: int,
    focus_rounds: int,
    warmup: int,
) -> dict[str, Any]:
    """Step seconds per method, paired per-round ratios to SimNPO, and each method's tensor peak,
    all in this process.

    `rounds` rounds step every method once (order rotated per round); `focus_rounds` more rounds
    step only SimNPO and the two NPO variants, whose ratios have targets. Then one step per method
    runs under torch.profiler for its tensor peak: the step's allocation peak plus what the method
    keeps resident (weights, its AdamW state, the frozen copy if it uses one)."""
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    shared_optimizer: torch.optim.Optimizer | None = None
    steppers: dict[str, Stepper] = {}
    for row in rows:
        # One AdamW over all weights serves every full-model method (its state is the same size
        # whoever steps it); RMU has its own over the MLPs it trains.
        is_rmu = row == "rmu"
        stepper = make_stepper(row, ws, model, reference, frozen, None if is_rmu else shared_optimizer)
        if not is_rmu:
            shared_optimizer = stepper.optimizer
        for p in model.parameters():
            p.requires_grad_(True)
        steppers[row] = stepper

    def run(stepper: Stepper, fn: Any) -> Any:
        trainable_parameters(model, stepper.params)  # RMU trains 3 MLPs; the rest train everything
        try:
            return fn()
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
            model.load_state_dict(snapshot)  # every step starts from the same weights

    samples: dict[str, list[float]] = {row: [] for row in rows}
    losses: dict[str, list[float]] = {row: [] for row in rows}
    schedule = [rows] * (warmup + rounds) + [[r for r in rows if r in FOCUS]] * focus_rounds
    for r, group in enumerate(schedule):
        for row in group[r % len(group) :] + group[: r % len(group)]:
            seconds, loss = run(steppers[row], lambda s=steppers[row]: harness.timed(s.step))
            if r >= warmup:
                samples[row].append(seconds)
                losses[row].append(loss)
    ratios: dict[str, float] = {}
    for row in rows:
        n = len(samples[row])  # paired with SimNPO's samples of the same rounds
        ratios[row] = harness.median(
            [s / b for s, b in zip(samples[row], samples["simnpo"][:n], strict=True)]
        )

    tensors: dict[str, dict[str, int]] = {}
    weights = harness.tensor_bytes(model)
    for row in rows:
        stepper = steppers[row]
        allocated, _ = run(stepper, lambda s=stepper: harness.tensor_allocation_peak(s.step))
        state = harness.optimizer_state_bytes(stepper.optimizer)
        kept = harness.tensor_bytes(frozen) if needs_frozen(row) else 0
        tensors[row] = {
            "peak_bytes": weights + state + kept + allocated,
            "weights_bytes": weights,
            "optimizer_state_bytes": state,
            "frozen_bytes": kept,
            "step_allocation_peak_bytes": allocated,
        }
    return {
        "seconds": samples,
        "median_seconds": {row: harness.median(samples[row]) for row in rows},
        "ratio_to_simnpo": ratios,
        "tensor_memory": tensors,
        "tensor_ratio_to_simnpo": {
            row: tensors[row]["peak_bytes"] / tensors["simnpo"]["peak_bytes"] for row in rows
        },
        "losses": losses,
        "finite": {row: bool(torch.isfinite(torch.tensor(v)).all()) for row, v in losses.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch_shape(ws),
    }


# ------------------------------------------------------------------------------------------- RSS


def rss_worker(preset: str, row: str, steps: int, reference_file: Path) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS of `steps` unlearning steps of one method, as VmHWM
    (reset just before the first step) minus VmRSS before the model is built."""
    ws = workspace(preset_config(preset))  # loads (and drops) a model: give its pages back first
    reference = json.loads(reference_file.read_text())
    harness.trim_heap()
    before_model = harness.rss_bytes()
    model = initial_model(ws.config, ws.data.corpus()).model
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if needs_frozen(row) else None
    stepper = make_stepper(row, ws, model, (reference[0], reference[1]), frozen)
    before_steps = harness.rss_bytes()
    reset = harness.reset_peak_rss()
    for _ in range(steps):
        stepper.step()
    return {
        "rss_peak_bytes": harness.peak_rss_bytes() - before_model,
        "rss_before_steps_bytes": before_steps - before_model,
        "rss_peak_reset": reset,
    }


def measure_rss(
    preset: str,
    reference: tuple[list[float], list[float]],
    rows: list[str],
    steps: int,
    threads: int,
) -> dict[str, Any]:
    samples: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference_file = Path(tmp) / "reference.json"
        reference_file.write_text(json.dumps(reference))
        for row in rows:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--rss-worker",
                row,
                "--models",
                preset,
                "--rss-steps",
                str(steps),
                "--threads",
                str(threads),
                "--reference-file",
                str(reference_file),
            ]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            samples[row] = json.loads(done.stdout.strip().splitlines()[-1])
    peak = {row: samples[row]["rss_peak_bytes"] for row in rows}
    return {"samples": samples, "ratio_to_simnpo": {row: peak[row] / peak["simnpo"] for row in rows}}


# ------------------------------------------------------------------------------------------ main


def verdict(ratio: float, target: float) -> str:
    return f"met ({ratio:.3f}x ≤ {target}x)" if ratio <= target else f"missed ({ratio:.3f}x > {target}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0, help="rounds of all methods (0: 12 tiny, 3 smollm2)")
    parser.add_argument("--focus-rounds", type=int, default=-1, help="extra rounds (-1: 24 tiny, 4 smollm2)")
    parser.add_argument("--rss", action="store_true", help="also peak RSS, one fresh process per method")
    parser.add_argument("--rss-steps", type=int, default=2)
    parser.add_argument("--rss-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reference-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.set_threads(args.threads)
    if args.rss_worker is not None:
        print(json.dumps(rss_worker(args.models[0], args.rss_worker, args.rss_steps, args.reference_file)))
        return

    rows = list(ROWS)
    results: dict[str, Any] = {"machine": harness.machine(), "presets": {}}
    for preset in args.models:
        config = preset_config(preset)
        if preset == "smollm2-135m" and not (Path(config.cache_dir) / "models" / SMOLLM2_FOLDER).is_dir():
            print(f"skipping {preset}: not imported (python -m raysimnpo import-model smollm2-135m)")
            continue
        small = preset == "tiny"
        rounds = args.rounds or (12 if small else 3)
        focus_rounds = args.focus_rounds if args.focus_rounds >= 0 else (24 if small else 4)
        ws = workspace(config)
        model = initial_model(ws.config, ws.data.corpus()).model
        reference = reference_nlls(ws, model)  # ℓ_ref under the Original, once, as a sweep caches it
        timing = time_steps(ws, model, reference, rows, rounds, focus_rounds, warmup=2 if small else 1)
        del model
        rss = measure_rss(preset, reference, rows, args.rss_steps, args.threads) if args.rss else None
        results["presets"][preset] = {
            "config": {
                "model": config.model.model_dump(mode="json"),
                "unlearn": config.unlearn.model_dump(mode="json"),
            },
            "rounds": rounds,
            "focus_rounds": focus_rounds,
            "time_and_tensors": timing,
            "rss": rss,
        }
        print(f"\n### {preset}: {timing['parameters']:,} parameters, batch {timing['batch']}\n")
        headers = ["method", "step ms (median)", "time / SimNPO", "peak tensor MiB", "memory / SimNPO"]
        if rss is not None:
            headers += ["peak RSS MiB", "RSS / SimNPO"]
        table = []
        for row in rows:
            line = [
                LABELS[row],
                timing["median_seconds"][row] * 1000,
                timing["ratio_to_simnpo"][row],
                timing["tensor_memory"][row]["peak_bytes"] / 2**20,
                timing["tensor_ratio_to_simnpo"][row],
            ]
            if rss is not None:
                line += [rss["samples"][row]["rss_peak_bytes"] / 2**20, rss["ratio_to_simnpo"][row]]
            table.append(line)
        print(harness.markdown_table(headers, table))
        t, m = timing["ratio_to_simnpo"], timing["tensor_ratio_to_simnpo"]
        n = len(timing["seconds"]["npo_cached"])
        print(
            f"\nNPO cached / SimNPO ({n} paired steps): time {verdict(t['npo_cached'], TARGET_CACHED)}, "
            f"memory {verdict(m['npo_cached'], TARGET_CACHED)}"
        )
        print(
            f"NPO online / SimNPO: time {t['npo_online']:.3f}x, memory {m['npo_online']:.3f}x "
            f"(paper Table A3: {PAPER_NPO_OVER_SIMNPO['time']:.2f}x, {PAPER_NPO_OVER_SIMNPO['memory']:.2f}x)"
        )
    results["machine_after"] = {"load_average": harness.machine()["load_average"]}
    results["paper_table_a3_npo_over_simnpo"] = PAPER_NPO_OVER_SIMNPO
    print(f"\nwrote {harness.write_result(NAME, results)}")


if __name__ == "__main__":
    main()
