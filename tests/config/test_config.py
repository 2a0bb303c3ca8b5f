"""Config loading: YAML, `--set` overrides and one-line errors naming the file and field."""

from pathlib import Path

import pytest

from raysimnpo.config.base import apply_overrides, sweep_file
from raysimnpo.config.run import RunSettings, load_run_config
from raysimnpo.errors import UserInputError
from raysimnpo.methods import NPOParams, SimNPOParams


def test_default_sweep_file_loads_with_simnpo() -> None:
    config = load_run_config("tofu")
    assert isinstance(config.method, SimNPOParams)
    assert config.data.source.kind == "generated"
    assert config.model.name == "tiny"


def test_method_flag_replaces_the_method_and_set_overrides_fields() -> None:
    config = load_run_config("tofu", ["method.beta=0.2", "unlearn.epochs=3"], method="npo")
    assert isinstance(config.method, NPOParams)
    assert config.method.beta == pytest.approx(0.2)
    assert config.unlearn.epochs == 3


@pytest.mark.parametrize(
    ("overrides", "method", "message"),
    [
        ([], "forget_everything", "--method forget_everything: method: Input tag 'forget_everything'"),
        (
            ["method.beta=0"],
            "simnpo",
            "--set method.beta=0: method.simnpo.beta: Input should be greater than 0 (got 0)",
        ),
        (
            ["method.beta=-1"],
            "npo",
            "--set method.beta=-1: method.npo.beta: Input should be greater than 0 (got -1)",
        ),
        (
            ["method.gamma=-0.5"],
            "simnpo",
            "--set method.gamma=-0.5: method.simnpo.gamma: Input should be greater than or",
        ),
        (["method.retain_weight=-1"], "grad_diff", "method.grad_diff.retain_weight: Input should be greater"),
        (["data.forget_split=forget07"], None, "data.forget_split: Input should be 'forget01', 'forget05'"),
        (
            ["unlearn.learning_rate=0"],
            None,
            "--set unlearn.learning_rate=0: unlearn.learning_rate: Input should be",
        ),
        (["method.delta=1"], "simnpo", "--set method.delta=1: method.simnpo.delta: unknown setting"),
    ],
)
def test_bad_values_name_the_flag_that_set_them(
    overrides: list[str], method: str | None, message: str
) -> None:
    with pytest.raises(UserInputError) as err:
        load_run_config("tofu", overrides, method=method)
    text = str(err.value)
    assert text.startswith("--")  # the flag, not the sweep file the other settings came from
    assert message in text
    assert "\n" not in text


def test_bad_values_of_the_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("run:\n  unlearn:\n    epochs: 0\n")
    with pytest.raises(UserInputError) as err:
        load_run_config(str(path), ["unlearn.batch_size=4"])
    assert str(err.value) == f"{path}: unlearn.epochs: Input should be greater than 0 (got 0)"


def test_unknown_sweep_name_lists_the_known_ones() -> None:
    with pytest.raises(UserInputError, match=r"unknown sweep or benchmark 'mmlu'; allowed: .*tofu"):
        sweep_file("mmlu")


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="expected key=value"):
        apply_overrides({}, ["method.beta"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(UserInputError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_run_config(str(bad))


def test_configs_are_frozen() -> None:
    config = RunSettings()
    with pytest.raises(Exception, match="frozen"):
        config.seed = 3  # type: ignore[misc]
