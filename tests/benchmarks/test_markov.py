"""raysimnpo.benchmarks.markov: config and sweep file, sampling streams, cache keys, one short run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from raysimnpo.benchmarks import markov as mk
from raysimnpo.config.base import SWEEPS_DIR
from raysimnpo.errors import UserInputError
from raysimnpo.methods import METHODS, StepTerms

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = mk.MarkovConfig.model_validate(
    {
        "data": {"num_retain": 60, "num_forget1": 30, "num_forget2": 30},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16},
        "pretrain": {"epochs": 1, "batch_size": 32},
        "unlearn": {"iterations": 4, "eval_every": 2},
        "beta_grid": {"npo": [], "simnpo": []},
    }
)


def test_defaults_are_the_papers() -> None:
    config = mk.MarkovConfig()
    assert (
        config.data.epsilon,
        config.data.num_retain,
        config.data.num_forget1,
        config.data.num_forget2,
    ) == (
        0.2,
        10_000,
        5_000,
        5_000,
    )
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (4, 4, 128)
    assert (config.pretrain.epochs, config.pretrain.batch_size, config.pretrain.learning_rate) == (
        5,
        128,
        5e-4,
    )
    assert (config.unlearn.iterations, config.unlearn.batch_size, config.unlearn.learning_rate) == (
        50,
        4,
        5e-4,
    )
    a, b = config.experiments["a"], config.experiments["b"]
    assert (a.forget2_length, a.forget2_in_pretraining, a.beta.npo, a.beta.simnpo) == (5, True, 0.2, 4.0)
    assert (b.forget2_length, b.forget2_in_pretraining, b.beta.npo, b.beta.simnpo) == (20, False, 1.0, 4.0)
    # The paper's β are always run, besides the grid: 5 NPO + 4 SimNPO per experiment.
    assert config.betas("a", "npo") == [0.05, 0.1, 0.2, 0.5, 1.0]
    assert len(config.grid()) == 18
    # The shipped sweep file holds exactly these defaults.
    sweep = mk.load_markov_sweep("markov")
    assert sweep.markov == config and sweep.benchmark == "markov"
    assert (
        mk.is_markov_sweep("markov") and not mk.is_markov_sweep("tofu") and not mk.is_markov_sweep("nonesuch")
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("markov.unlearn.iterations=0", "markov.unlearn.iterations: Input should be greater than 0 (got 0)"),
        (
            "markov.experiments.a.forget2_length=30",
            "experiments.a.forget2_length: 30 exceeds model.n_positions (20)",
        ),
        ("markov.beta_grid.npo=[0.1, -1]", "npo: every beta must be > 0; got [-1.0]"),
        ("markov.data.num_forget2=2", "data.num_forget2: 2 sequences leave an empty train or test split"),
        ("markov.device=cuda", "markov.device: cuda needs resources.gpus_per_task > 0"),
        ("markov.nonesuch=1", "markov.nonesuch: unknown setting"),
    ],
)
def test_bad_values_name_the_override_and_field(override: str, expected: str) -> None:
    with pytest.raises(UserInputError) as info:
        mk.load_markov_sweep("markov", [override])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--set {override}: ") and expected in message


def test_a_bad_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "markov.yaml"
    bad.write_text(
        (SWEEPS_DIR / "markov.yaml").read_text().replace("markov:\n  seed: 0", "markov:\n  seed: -1", 1)
    )
    with pytest.raises(
        UserInputError, match=rf"^{bad}: markov.seed: Input should be greater than or equal to 0"
    ):
        mk.load_markov_sweep(str(bad))


def test_sampling_is_seeded_per_chain() -> None:
    a, b = TINY.experiments["a"], TINY.experiments["b"]
    data_a, again, data_b = mk.sample_data(TINY, a), mk.sample_data(TINY, a), mk.sample_data(TINY, b)
    np.testing.assert_array_equal(data_a["retain"].train, again["retain"].train)
    # Changing Forget2's length leaves the retain and Forget1 sequences as they were.
    np.testing.assert_array_equal(data_a["retain"].test, data_b["retain"].test)
    np.testing.assert_array_equal(data_a["forget1"].train, data_b["forget1"].train)
    assert data_a["forget2"].train.shape == (24, 5) and data_b["forget2"].train.shape == (24, 20)
    assert data_a["retain"].test.shape == (12, 20)  # 20% of 60
    # P(s_t in {6,7,8}) = p_t with p_0 = 0.8 and p_{t+1} = 0.8 p_t + 0.3 (1 − p_t) (inside: stay with
    # 0.8; outside: a uniform row, 3 of 10), so p_t = 0.6 + 0.2 · 0.5^t; over t = 0..19 the mean is
    # 0.6 + 0.2 · (1 − 0.5^20) / (0.5 · 20) = 0.62.
    seqs = mk.sample_chain(mk.paper_chain("forget2"), 4000, 20, np.random.default_rng(1))
    assert np.isin(seqs, [6, 7, 8]).mean() == pytest.approx(0.62, abs=0.005)
    assert np.isin(seqs[:, 0], [6, 7, 8]).mean() == pytest.approx(0.8, abs=0.02)


def test_padding_and_cache_keys(tmp_path: Path) -> None:
    labels = mk.pad([np.array([[1, 2, 3]]), np.array([[4, 5]])])
    assert labels.tolist() == [[1, 2, 3], [4, 5, -100]]
    assert mk.inputs(labels).tolist() == [[1, 2, 3], [4, 5, 0]]
    a, b = TINY.experiments["a"], TINY.experiments["b"]
    # Same retain data -> one Retrain for both experiments; the Originals differ.
    assert mk.model_dir(tmp_path, TINY, a, "retrain") == mk.model_dir(tmp_path, TINY, b, "retrain")
    assert mk.model_dir(tmp_path, TINY, a, "original") != mk.model_dir(tmp_path, TINY, b, "original")
    other = TINY.model_copy(update={"pretrain": TINY.pretrain.model_copy(update={"epochs": 2})})
    assert mk.model_key(other, a, "retrain") != mk.model_key(TINY, a, "retrain")


def test_initial_npo_loss_is_2ln2_over_beta() -> None:
    # At the first step θ = θ_ref, so ℓ = ℓ_ref and NPO's loss is −(2/β) log σ(0) = 2 ln 2 / β.
    # The study's methods are the package's METHODS entries, with the study's β, γ and λ.
    nll = torch.tensor([3.0, 7.0])
    params = mk.method_params("npo", 0.2, TINY.unlearn)
    terms = StepTerms(
        forget_nll=nll,
        forget_tokens=torch.tensor([4.0, 19.0]),
        forget_ref_nll=nll.clone(),
        retain_nll=nll,
        retain_tokens=torch.tensor([4.0, 19.0]),
    )
    forget_term, _ = METHODS["npo"].loss(terms, params)
    assert forget_term.item() == pytest.approx(2 * math.log(2) / 0.2)
    assert mk.method_params("simnpo", 4.0, TINY.unlearn).model_dump() == {
        "name": "simnpo",
        "beta": 4.0,
        "gamma": TINY.unlearn.gamma,
        "retain_weight": TINY.unlearn.retain_weight,
    }
    with pytest.raises(UserInputError, match="allowed: npo, simnpo"):
        mk.method_params("ga", 1.0, TINY.unlearn)


def test_prepare_caches_and_unlearning_rows(tmp_path: Path) -> None:
    messages: list[str] = []
    path = mk.prepare_model(TINY, TINY.experiments["a"], "original", tmp_path, messages.append)
    assert (path / "model.safetensors").is_file() and "epoch 1/1" in messages[-1]
    assert mk.prepare_model(TINY, TINY.experiments["a"], "original", tmp_path, messages.append) == path
    assert "cached" in messages[-1]

    reference = mk.reference_row(TINY, "a", "original", path)
    rows = mk.unlearn_trajectory(TINY, "a", "simnpo", 4.0, path)
    assert [r["iteration"] for r in rows] == [0, 2, 4]
    assert {(r["experiment"], r["method"], r["beta"]) for r in rows} == {("a", "simnpo", 4.0)}
    # Iteration 0 is the Original itself.
    for key in ("forget1_kl", "forget2_kl", "retain_kl"):
        assert rows[0][key] == pytest.approx(reference[key], rel=1e-6)
    assert all(r[k] >= 0 for r in rows for k in ("forget1_kl", "forget2_kl", "retain_kl"))


def test_sweep_file_is_yaml_with_benchmark_at_top() -> None:
    data = yaml.safe_load((SWEEPS_DIR / "markov.yaml").read_text())
    assert data["benchmark"] == "markov" and "markov" in data
