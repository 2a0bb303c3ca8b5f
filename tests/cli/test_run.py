"""`python -m raysimnpo.run`: bad input gives one line on stderr, exit code 2, nothing prepared."""

import json
import shutil
from pathlib import Path

import pytest

from raysimnpo.cli import run

TOFU = Path(__file__).resolve().parents[3] / "shared" / "data" / "tofu"


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without --out write to ./runs/single/: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = run.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def local_tofu(tmp_path: Path) -> Path:
    """A small local TOFU folder in the real format: the first rows of the real files when present."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    from raysimnpo.data.generators.tofu import TofuGeneratorConfig, generate_tofu_dataset

    generate_tofu_dataset(folder, TofuGeneratorConfig.preset("small"))
    return folder


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["mmlu", "--method", "simnpo"], "unknown sweep or benchmark 'mmlu'"),
        (["tofu", "--method", "unlearn_harder"], "method: Input tag 'unlearn_harder' found using 'name'"),
        (
            ["tofu", "--method", "npo", "--set", "method.beta=0"],
            "method.npo.beta: Input should be greater than 0",
        ),
        (
            ["tofu", "--method", "simnpo", "--set", "method.beta=-2"],
            "method.simnpo.beta: Input should be greater",
        ),
        (
            ["tofu", "--method", "simnpo", "--set", "method.gamma=-1"],
            "method.simnpo.gamma: Input should be greater",
        ),
        (["tofu", "--method", "npo", "--set", "method.retain_weight=-0.5"], "method.npo.retain_weight"),
        (["tofu", "--set", "unlearn.epochs"], "expected key=value"),
    ],
)
def test_config_mistakes(
    capsys: pytest.CaptureFixture[str], cache: Path, argv: list[str], expected: str
) -> None:
    code, line = call(capsys, *argv, "--set", f"cache_dir={cache}")
    assert code == 2
    assert line.startswith("error: ") and expected in line
    assert not cache.exists()


def _local(folder: Path, cache: Path) -> list[str]:
    return [
        "--set",
        "data.source.kind=local",
        "--set",
        f"data.source.path={folder}",
        "--set",
        f"cache_dir={cache}",
    ]


def test_missing_split(capsys: pytest.CaptureFixture[str], local_tofu: Path, cache: Path) -> None:
    (local_tofu / "retain90.jsonl").unlink()
    code, line = call(capsys, "tofu", "--method", "simnpo", *_local(local_tofu, cache))
    assert code == 2 and "retain90" in line and str(local_tofu) in line
    assert not (cache / "prepared").exists()


def test_corrupt_jsonl_line_names_file_and_line(
    capsys: pytest.CaptureFixture[str], local_tofu: Path, cache: Path
) -> None:
    path = local_tofu / "forget10.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"question": "Who?", "answer": '
    path.write_text("\n".join(lines) + "\n")
    code, line = call(capsys, "tofu", "--method", "simnpo", *_local(local_tofu, cache))
    assert code == 2 and "forget10.jsonl" in line and "line 3" in line
    assert not (cache / "prepared").exists()


def test_empty_answer(capsys: pytest.CaptureFixture[str], local_tofu: Path, cache: Path) -> None:
    path = local_tofu / "full.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[4]["answer"] = "  "
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, line = call(capsys, "tofu", "--method", "simnpo", *_local(local_tofu, cache))
    assert code == 2 and "full.jsonl" in line and "answer" in line
    assert not (cache / "prepared").exists()


def test_prompt_leaving_no_target_tokens(
    capsys: pytest.CaptureFixture[str], local_tofu: Path, cache: Path
) -> None:
    code, line = call(
        capsys, "tofu", "--method", "simnpo", *_local(local_tofu, cache), "--set", "prepare.max_length=9"
    )
    assert code == 2 and "no answer token fits in max_length=9" in line
    assert not (cache / "prepared").exists()


@pytest.mark.skipif(not TOFU.is_dir(), reason="the real TOFU files are not beside the checkout")
def test_real_tofu_folder_is_accepted_as_a_source(tmp_path: Path) -> None:
    from raysimnpo.benchmarks.tofu import load_tofu_run_data
    from raysimnpo.data.sources import TofuSource

    copy = tmp_path / "tofu"
    shutil.copytree(TOFU, copy)
    data = load_tofu_run_data(TofuSource(kind="local", path=str(copy)), "forget05")
    assert (len(data.forget), len(data.retain), len(data.full)) == (200, 3800, 4000)


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_cache_dir_that_cannot_be_made_is_one_line_before_any_work(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = blocker / "cache"
    argv = ["tofu", "--out", str(tmp_path / "out")]
    if given == "flag":
        argv += ["--set", f"cache_dir={cache}"]
        setting = "cache_dir"
    else:  # the default, from the environment
        monkeypatch.setenv("RAYSIMNPO_CACHE", str(cache))
        setting = "cache_dir (default: $RAYSIMNPO_CACHE, else ~/.cache/raysimnpo)"
    assert run.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {setting}: {cache} is not writable (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
