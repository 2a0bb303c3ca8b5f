"""`python -m raysimnpo <command>`: one entry point that hands the rest of the line to raysimnpo/cli/."""

from __future__ import annotations

import pytest

from raysimnpo.__main__ import COMMANDS, main


def test_every_command_is_a_cli_module() -> None:
    import importlib

    for module in COMMANDS.values():
        assert callable(importlib.import_module(f"raysimnpo.cli.{module}").main)


def test_a_command_gets_the_rest_of_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-model", "--list"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_an_unknown_command_is_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweeep"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown command 'sweeep'")
