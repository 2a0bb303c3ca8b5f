"""Full TOFU evaluation: the batched evaluator against a straightforward per-example loop (issue 8).

Both evaluate the same model on the default run's data (sweeps/tofu.yaml: generated TOFU,
forget10, the `tiny` model) — forget, retain, real authors and world facts, every metric:
Prob, ROUGE-L recall of greedy answers, Truth Ratio, forget quality and model utility.

* batched: `raysimnpo.benchmarks.tofu_evaluation.evaluate_tofu` — every answer of a split (answer, paraphrase,
  perturbed answers) in one length-sorted scoring pass of `evaluation.batch_size`, and greedy
  generation in batches with a KV cache;
* per-example (written here from the package's metric functions, as a first implementation would
  be): one forward per answer with batch size 1, a separate pass per metric (Prob, then Truth
  Ratio, which scores the answers it needs again), and `generate` on one prompt at a time.

The model is the default recipe's Original (full + the utility QA, `prepare` settings of
sweeps/tofu.yaml) trained for only `--train-epochs` epochs, to keep the run short. Forget quality
needs a Retrain distribution; both evaluators get the same stand-in: the forget truth ratios of the
untrained model. The two must agree on every metric to 1e-5 and on every generated text.

    .venv/bin/python perf/eval_throughput.py [--rounds 3] [--train-epochs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import harness
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from raysimnpo.benchmarks import tofu_evaluation as evaluation
from raysimnpo.benchmarks.tofu import EvalSplit
from raysimnpo.benchmarks.tofu_evaluation import evaluate_tofu
from raysimnpo.config.base import EvalSettings
from raysimnpo.config.run import load_run_config
from raysimnpo.data.formatting import EncodedExample, PromptFormat, encode_prompt, encode_qa
from raysimnpo.maths.logprobs import sequence_nll
from raysimnpo.maths.metrics import text, tofu
from raysimnpo.recipes.workspace import Workspace, initial_model, workspace
from raysimnpo.training.loop import train
from raysimnpo.training.scoring import score_sequences

NAME = "eval_throughput"
TARGET_SPEEDUP = 3.0
TOLERANCE = 1e-5


# ------------------------------------------------------------------------- the per-example loop


@torch.no_grad()
def nll_one(model: PreTrainedModel, example: EncodedExample) -> tuple[float, int]:
    """(ℓ, |y|) of one answer: one forward, batch size 1, no padding."""
    input_ids = torch.tensor([example.input_ids])
    labels = torch.tensor([example.labels])
    logits = model(input_ids=input_ids).logits
    nll, n = sequence_nll(logits.float(), labels)
    return float(nll[0]), int(n[0])


@torch.no_grad()
def generate_one(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: list[int], max_new_tokens: int
) -> str:
    """Greedy answer to one prompt (KV cache, stops at EOS), decoded as the batched evaluator does."""
    input_ids = torch.tensor([prompt])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    return str(tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True)).strip()


def evaluate_per_example(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    splits: tuple[EvalSplit, ...],
    settings: EvalSettings,
    max_length: int,
    retrain_forget_truth_ratios: np.ndarray,
    phases: dict[str, float],
) -> tuple[dict[str, float], dict[tuple[str, int], str]]:
    """TOFU's metrics one example, one answer and one metric at a time (DESIGN §6 definitions).
    `phases` accumulates the seconds spent in forwards ("scoring") and in `generate`."""
    model.eval()

    def score(question: str, answer: str) -> tuple[float, int]:
        example = encode_qa(tokenizer, question, answer, prompt_format, max_length)
        started = time.perf_counter()
        result = nll_one(model, example)
        phases["scoring"] += time.perf_counter() - started
        return result

    def scores(pairs: list[list[tuple[float, int]]]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[p[0] for p in row] for row in pairs]), np.array(
            [[p[1] for p in row] for row in pairs], dtype=np.float64
        )

    metrics: dict[str, float] = {}
    generations: dict[tuple[str, int], str] = {}
    forget_ratios = np.array([])
    for split in splits:
        rows = split.rows
        # Pass 1, Prob: P̃(answer), or on real_authors/world_facts the normalised choice probability.
        answer_nll, answer_n = scores([[score(r["question"], r["answer"])] for r in rows])
        if split.choice_prob:
            wrong_nll, wrong_n = scores(
                [[score(r["question"], w) for w in r["perturbed_answer"]] for r in rows]
            )
            prob = tofu.choice_prob(answer_nll[:, 0], answer_n[:, 0], wrong_nll, wrong_n)
        else:
            prob = tofu.answer_prob(answer_nll[:, 0], answer_n[:, 0])
        # Pass 2, Truth Ratio: the reference answer and the perturbed answers, scored again.
        ref_nll, ref_n = scores([[score(r["question"], r[split.reference_field])] for r in rows])
        wrong_nll, wrong_n = scores([[score(r["question"], w) for w in r["perturbed_answer"]] for r in rows])
        ratio = tofu.truth_ratio(wrong_nll, wrong_n, ref_nll[:, 0], ref_n[:, 0])
        # Pass 3, ROUGE-L recall of greedy answers, one prompt at a time.
        limit = settings.generation_limit
        rouge = []
        for i, r in enumerate(rows):
            if limit is not None and i >= limit:
                break
            prompt = encode_prompt(tokenizer, r["question"], prompt_format)
            started = time.perf_counter()
            generations[(split.name, i)] = generate_one(model, tokenizer, prompt, settings.max_new_tokens)
            phases["generation"] += time.perf_counter() - started
            rouge.append(text.rouge_l_recall(generations[(split.name, i)], r["answer"]))
        metrics[f"{split.name}_prob"] = float(np.mean(prob))
        metrics[f"{split.name}_rouge"] = float(np.mean(rouge)) if rouge else float("nan")
        score_fn = tofu.forget_truth_score if split.name == "forget" else tofu.utility_truth_score
        metrics[f"{split.name}_truth_ratio"] = float(score_fn(ratio))
        if split.name == "forget":
            forget_ratios = ratio
    fq = tofu.forget_quality(forget_ratios, retrain_forget_truth_ratios)
    metrics["forget_quality"] = fq.pvalue
    metrics["forget_quality_ks_statistic"] = fq.statistic
    metrics["forget_quality_at_floor"] = float(fq.at_floor)
    metrics["model_utility"] = tofu.model_utility({k: metrics[k] for k in tofu.MODEL_UTILITY_KEYS})
    return metrics, generations


# ----------------------------------------------------------------------------------- the setup


def forget_truth_ratios(ws: Workspace, model: PreTrainedModel) -> np.ndarray:
    """The forget split's truth ratios (paraphrase vs perturbed answers), through the batch scorer."""
    split = ws.data.eval_split("forget")
    length = ws.config.prepare.max_length
    refs = [
        ws.encode([{"question": r["question"], "answer": r["paraphrased_answer"]}], length)[0]
        for r in split.rows
    ]
    m = len(split.rows[0]["perturbed_answer"])
    wrong = ws.encode(
        [{"question": r["question"], "answer": w} for r in split.rows for w in r["perturbed_answer"]], length
    )
    batch = ws.config.evaluation.batch_size
    ref_nll, ref_n = score_sequences(model, refs, batch, ws.pad_id)
    wrong_nll, wrong_n = score_sequences(model, wrong, batch, ws.pad_id)
    return tofu.truth_ratio(wrong_nll.reshape(-1, m), wrong_n.reshape(-1, m), ref_nll, ref_n)


@contextmanager
def timing_batched_phases(phases: dict[str, float]) -> Iterator[None]:
    """Time the batched evaluator's two phases by wrapping the scorers `evaluation` calls."""
    originals = {"scoring": evaluation.score_sequences, "generation": evaluation.generate_greedy}

    def wrap(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_fn(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[phase] += time.perf_counter() - started

        return timed_fn

    evaluation.score_sequences = wrap("scoring", originals["scoring"])  # type: ignore[assignment]
    evaluation.generate_greedy = wrap("generation", originals["generation"])  # type: ignore[assignment]
    try:
        yield
    finally:
        evaluation.score_sequences = originals["scoring"]  # type: ignore[assignment]
        evaluation.generate_greedy = originals["generation"]  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=5)
    args = parser.parse_args()
    harness.set_threads(args.threads)
    machine = harness.machine()

    config = load_run_config("tofu")
    ws = workspace(config)
    model = initial_model(ws.config, ws.data.corpus()).model
    stand_in_retrain = forget_truth_ratios(ws, model)  # the untrained model's forget truth ratios
    settings = config.prepare.model_copy(update={"epochs": args.train_epochs})
    examples = ws.encode(ws.data.full + ws.data.utility_train_rows)
    train_seconds, summary = harness.timed(
        lambda: train(model, settings, pad_id=ws.pad_id, seed=config.seed, examples=examples)
    )
    print(
        f"trained {args.train_epochs} epochs in {train_seconds:.0f} s; loss {summary.epochs[-1]['loss']:.3f}"
    )

    phases = {name: {"scoring": 0.0, "generation": 0.0} for name in ("batched", "per_example")}

    def batched() -> Any:
        with timing_batched_phases(phases["batched"]):
            return evaluate_tofu(
                model,
                ws.tokenizer,
                ws.prompt_format,
                ws.data.eval_splits,
                config.evaluation,
                config.prepare.max_length,
                stand_in_retrain,
            )

    def per_example() -> Any:
        return evaluate_per_example(
            model,
            ws.tokenizer,
            ws.prompt_format,
            ws.data.eval_splits,
            config.evaluation,
            config.prepare.max_length,
            stand_in_retrain,
            phases["per_example"],
        )

    seconds: dict[str, list[float]] = {"batched": [], "per_example": []}
    speedups: list[float] = []
    batched_result = per_example_result = None
    for r in range(args.rounds):
        # Alternate which evaluator goes first, so a change in load hits both alike.
        order = ["batched", "per_example"] if r % 2 == 0 else ["per_example", "batched"]
        this_round = {}
        for name in order:
            took, result = harness.timed(batched if name == "batched" else per_example)
            this_round[name] = took
            seconds[name].append(took)
            if name == "batched":
                batched_result = result
            else:
                per_example_result = result
        speedups.append(this_round["per_example"] / this_round["batched"])
    assert batched_result is not None and per_example_result is not None

    loop_metrics, loop_generations = per_example_result
    rows = []
    max_diff = 0.0
    for key, value in batched_result.metrics.items():
        diff = abs(value - loop_metrics[key])
        max_diff = max(max_diff, diff)
        rows.append([key, value, loop_metrics[key], f"{diff:.1e}"])
    generated = [e for e in batched_result.examples if e["generation"] is not None]
    mismatched = [
        (e["split"], e["index"])
        for e in generated
        if loop_generations.get((e["split"], e["index"])) != e["generation"]
    ]
    speedup = harness.median(speedups)
    n_sequences = sum(
        len(s.rows) * (1 + (s.reference_field != "answer") + len(s.rows[0]["perturbed_answer"]))
        for s in ws.data.eval_splits
    )
    # Phase seconds are summed over rounds: report means per round (other = mean total − phases).
    per_round = {k: {p: v / args.rounds for p, v in ph.items()} for k, ph in phases.items()}
    timing_rows = [
        [
            label,
            harness.median(seconds[key]),
            per_round[key]["scoring"],
            per_round[key]["generation"],
            sum(seconds[key]) / args.rounds - per_round[key]["scoring"] - per_round[key]["generation"],
            ratio,
        ]
        for label, key, ratio in (
            ("batched (evaluate_tofu)", "batched", 1.0),
            ("per-example loop", "per_example", speedup),
        )
    ]
    print(
        f"\n{sum(len(s.rows) for s in ws.data.eval_splits)} questions, {n_sequences} answers scored by the "
        f"batched evaluator, {len(generated)} generations of up to {config.evaluation.max_new_tokens} tokens\n"
    )
    headers = ["evaluator", "total s (median)", "scoring s", "generation s", "other s", "batched speed-up"]
    print(harness.markdown_table(headers, timing_rows))
    print()
    print(harness.markdown_table(["metric", "batched", "per-example", "|diff|"], rows))
    identical = max_diff <= TOLERANCE and not mismatched
    print(
        f"\nmetrics agree to {max_diff:.1e} (tolerance {TOLERANCE}); "
        f"{len(generated) - len(mismatched)}/{len(generated)} generations identical"
    )
    verdict = "met" if speedup >= TARGET_SPEEDUP else "missed"
    print(f"speed-up {speedup:.1f}x: target ≥ {TARGET_SPEEDUP}x {verdict}; identical results: {identical}")
    result = {
        "machine": machine,
        "machine_after": {"load_average": harness.machine()["load_average"]},
        "model": {
            "preset": config.model.name,
            "tiny": config.model.tiny.model_dump(mode="json"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_epochs": args.train_epochs,
            "train_seconds": train_seconds,
            "final_train_loss": summary.epochs[-1]["loss"],
        },
        "evaluation": config.evaluation.model_dump(mode="json"),
        "max_length": config.prepare.max_length,
        "questions": sum(len(s.rows) for s in ws.data.eval_splits),
        "batched_answers_scored": n_sequences,
        "generations": len(generated),
        "seconds": seconds,
        "speedups": speedups,
        "phase_seconds_mean_per_round": per_round,
        "median_speedup": speedup,
        "metrics_batched": batched_result.metrics,
        "metrics_per_example": loop_metrics,
        "max_abs_metric_diff": max_diff,
        "mismatched_generations": mismatched,
        "identical": identical,
    }
    print(f"\nwrote {harness.write_result(NAME, result)}")


if __name__ == "__main__":
    main()
