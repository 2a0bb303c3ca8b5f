"""One workspace per sweep: built once, handed to each trial's run as it is (`Workspace.for_run`),
rebuilt only when a trial's settings change what it holds; the unlearning sets are encoded once."""

from __future__ import annotations

import pickle

import pytest

from raysimnpo.config.run import RunSettings
from raysimnpo.data.generators.tofu import TofuGeneratorConfig
from raysimnpo.recipes.workspace import (
    Workspace,
    reference_examples,
    training_examples,
    workspace,
    workspace_key,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> RunSettings:
    return RunSettings.model_validate(
        {
            "device": "cpu",
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
            "data": {
                "source": {
                    "kind": "generated",
                    "generator": TofuGeneratorConfig.preset("small").model_dump(),
                },
                "forget_split": "forget10",
            },
            "model": {
                "name": "tiny",
                "tiny": {
                    "hidden_size": 16,
                    "num_hidden_layers": 1,
                    "vocab_size": 300,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                    "intermediate_size": 32,
                },
            },  # fmt: skip
            "prepare": {"max_length": 128},
            "unlearn": {"max_length": 128},
        }
    )


@pytest.fixture(scope="module")
def ws(config: RunSettings) -> Workspace:
    return workspace(config)


def test_a_trial_of_other_method_and_optimiser_settings_shares_the_workspace(
    ws: Workspace, config: RunSettings
) -> None:
    trial = config.model_copy(
        update={
            "method": config.method.model_copy(update={"beta": 4.0}),
            "unlearn": config.unlearn.model_copy(update={"learning_rate": 3e-4, "epochs": 7}),
        }
    )
    shared = ws.for_run(trial)
    assert shared.config is trial and shared.data is ws.data and shared.tokenizer is ws.tokenizer
    # The unlearning sets were encoded when the workspace was built; the trial reuses them.
    forget = training_examples(shared, "forget", trial.unlearn.max_length)
    assert forget is ws.encoded[("forget", 128)]
    assert len(forget) == len(ws.data.forget) and all(e.n_targets > 0 for e in forget)
    assert reference_examples(shared)[1] is ws.encoded[("refusal", 128)]


def test_a_trial_that_changes_the_data_gets_its_own_workspace(ws: Workspace, config: RunSettings) -> None:
    other = config.model_copy(update={"seed": 1})
    assert workspace_key(other) != ws.key
    rebuilt = ws.for_run(other)
    assert rebuilt.key == workspace_key(other) and rebuilt.data is not ws.data


def test_the_workspace_survives_serialisation(ws: Workspace) -> None:
    """What the object store does to it (Ray serialises with pickle; nothing a user shares)."""
    back = pickle.loads(pickle.dumps(ws))
    assert back.key == ws.key
    assert back.encoded[("forget", 128)] == ws.encoded[("forget", 128)]
    assert back.tokenizer("Who wrote it?")["input_ids"] == ws.tokenizer("Who wrote it?")["input_ids"]
