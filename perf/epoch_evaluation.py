"""What one per-epoch evaluation costs on the default sweep, part by part, against one unlearning
epoch (issue 15: evaluate after every epoch, and make it cheap).

The default sweep's workspace and cached Original (`sweeps/tofu.yaml`: generated TOFU forget10, the
`tiny` model; run `make sweep` or the sweep once so they exist), unlearned with SimNPO for 2 epochs
at the file's settings, then timed at 1 thread (a default trial's `cpus_per_worker`), in rounds:

- `unlearning epoch`: one more SimNPO epoch (the loop's own seconds);
- `encode`: tokenizing the 1800 scored answers and 300 prompts (`data.formatting.QAEncoder`, cold);
  the per-epoch evaluator keeps them in the workspace's encoder, so only a trial's first evaluation pays it;
- `score, logits everywhere` / `score, logits from the first target`: `training.scoring.score_sequences`
  on a model wrapper without `logits_to_keep` (every position gets LM-head logits, as before) and on
  the model itself (only the positions that predict a target);
- `generate`: greedy answers to the 300 questions (ROUGE-L, part of MU);
- `evaluation as a trial runs it`: `score_items` + `aggregate` with a warm encoder (the sum of the
  above with logits from the first target, plus the metrics).

    .venv/bin/python perf/epoch_evaluation.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import torch  # noqa: E402

from raysimnpo.benchmarks.tofu_evaluation import scored_answers  # noqa: E402
from raysimnpo.config.run import load_run_config  # noqa: E402
from raysimnpo.data.formatting import QAEncoder  # noqa: E402
from raysimnpo.recipes.prepare import prepare, retrain_reference  # noqa: E402
from raysimnpo.recipes.unlearn import unlearn_model  # noqa: E402
from raysimnpo.recipes.workspace import Workspace, workspace  # noqa: E402
from raysimnpo.training.scoring import generate_greedy, score_sequences  # noqa: E402


class LogitsEverywhere(torch.nn.Module):
    """The model with a forward that takes no `logits_to_keep`: scored the way it was before the cut."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def evaluation_inputs(ws: Workspace, encoder: QAEncoder) -> tuple[list[Any], list[list[int]]]:
    """Every answer the TOFU evaluation scores and every prompt it answers, as `example_statistics` builds them."""
    length = ws.config.prepare.max_length
    answers = [e for s in ws.data.eval_splits for e in scored_answers(encoder, s, s.rows, length).encoded]
    prompts = [encoder.prompt(row["question"]) for s in ws.data.eval_splits for row in s.rows]
    return answers, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    harness.set_threads(1)
    config = load_run_config("tofu", ["unlearn.epochs=2", "evaluation.every_epoch=false"], method="simnpo")
    ws = workspace(config)
    prepared = prepare(ws)
    model, _ = unlearn_model(ws, prepared.original.path)
    one_more = load_run_config("tofu", ["unlearn.epochs=1"], method="simnpo")
    settings, pad_id = config.evaluation, ws.pad_id
    bench = ws.benchmark
    items = bench.evaluation_items(ws)
    reference = retrain_reference(ws, prepared.retrain)
    bench.aggregate(ws, bench.score_items(model, ws, items), reference)  # warms the workspace's encoder

    samples: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    batch = settings.batch_size
    for _ in range(args.rounds):
        started = time.perf_counter()
        answers, prompts = evaluation_inputs(ws, QAEncoder(ws.tokenizer, ws.prompt_format))
        add("encode", time.perf_counter() - started)
        everywhere = partial(score_sequences, LogitsEverywhere(model), answers, batch, pad_id)
        add("score, logits everywhere", harness.timed(everywhere)[0])
        add(
            "score, logits from the first target",
            harness.timed(partial(score_sequences, model, answers, batch, pad_id))[0],
        )
        answer = partial(generate_greedy, model, ws.tokenizer, prompts, settings.max_new_tokens, batch)
        add("generate", harness.timed(answer)[0])
        add(
            "evaluation as a trial runs it",
            harness.timed(lambda: bench.aggregate(ws, bench.score_items(model, ws, items), reference))[0],
        )
        _, summary = unlearn_model(ws.for_run(one_more), prepared.original.path)
        add("unlearning epoch", summary.seconds)

    epoch = harness.median(samples["unlearning epoch"])
    rows = [
        [
            name,
            f"{harness.median(values):.3f}",
            f"{harness.median(values) / epoch:.2f}",
            " ".join(f"{v:.3f}" for v in values),
        ]
        for name, values in samples.items()
    ]
    print(f"{len(answers)} answers scored, {len(prompts)} questions answered, 1 thread, {args.rounds} rounds")
    print(harness.markdown_table(["part", "seconds (median)", "/ unlearning epoch", "rounds"], rows))
    path = harness.write_result(
        "epoch_evaluation",
        {
            "machine": harness.machine(),
            "answers_scored": len(answers),
            "questions_answered": len(prompts),
            "threads": 1,
            "seconds": samples,
        },
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
