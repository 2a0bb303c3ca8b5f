"""Same numbers at any worker count (DESIGN §2 "One path"): the same trial config and seed unlearned
by (a) one process, (b) one TorchTrainer worker and (c) two FSDP2 TorchTrainer workers on gloo give
the same global batches, per-epoch losses, final weights, forget quality, model utility and
per-example truth ratios, for SimNPO, NPO, GradDiff-KL and RMU (`raysimnpo.orchestration.invariance`:
one TorchTrainer start per world size runs all four methods)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raysimnpo.orchestration import invariance

METHODS = list(invariance.METHOD_PARAMS)


@pytest.mark.ray
def test_one_process_one_worker_and_two_fsdp_workers_give_the_same_numbers(
    ray_cluster: None, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    config, original, reference = invariance.prepare_case(tmp_path)
    single = invariance.run_methods(config.model_dump_json(), str(original), reference, METHODS)
    runs = {
        "one_worker": invariance.run_on_workers(config, original, reference, METHODS, num_workers=1),
        "two_workers": invariance.run_on_workers(config, original, reference, METHODS, num_workers=2),
    }
    for method in METHODS:
        # the methods moved the weights and the losses are those of a real run
        assert single[method]["losses"][0]["loss"] != single[method]["losses"][1]["loss"]
        # two epochs of 6 forget QA in batches of 4: a batch of 4, then one of 2 (one per rank)
        assert [len(b) for b in single[method]["batches"]] == [4, 2, 4, 2]
        for run, results in runs.items():
            diff = invariance.compare(single[method], results[method])
            where = f"{method} {run}: {diff}"
            assert diff["same_batches"], where
            assert diff["losses"] <= 1e-5, where
            assert diff["weights"] <= 1e-5, where
            assert diff["forget_quality"] <= 1e-4, where
            assert diff["model_utility"] <= 1e-4, where
            assert diff["truth_ratios"] <= 1e-4, where
