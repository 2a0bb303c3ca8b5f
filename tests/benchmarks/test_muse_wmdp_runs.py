"""`python -m raysimnpo.run` on MUSE and WMDP generated data, end to end with a very small model:
Original and Retrain are prepared on raw-text chunks, the Original is unlearned with the one training
loop, and every metric of the benchmark is printed for the three models. Also the bad-input paths."""

import json
from pathlib import Path

import pytest

from raysimnpo.cli import run

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_hidden_layers=2",
    "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=2",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "prepare.epochs=2",
    "unlearn.epochs=1",
]


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without --out write to ./runs/single/: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def call_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert run.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_muse_run_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = "muse.source.generator={seed: 0, forget_articles: 4, retain_articles: 4, holdout_articles: 4, icl_shots: 1}"
    argv = ["muse-news-generated", "--method", "npo", *sets(*TINY, small, f"cache_dir={tmp_path}")]
    argv += sets(
        "muse.verbmem_max_new_tokens=8", "muse.knowmem_max_new_tokens=4", "evaluation.generation_limit=2"
    )
    out = call_json(capsys, *argv)
    assert list(out["metrics"]) == ["Original", "Retrain", "npo"]
    for metrics in out["metrics"].values():
        assert {"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak", "privleak_auc"} <= set(
            metrics
        )
    assert out["metrics"]["Retrain"]["privleak"] == 0.0
    auc_retrain = out["metrics"]["Retrain"]["privleak_auc"]
    for name in ("Original", "npo"):
        m = out["metrics"][name]
        assert m["privleak"] == pytest.approx((m["privleak_auc"] - auc_retrain) / auc_retrain * 100)
    assert len(out["training"]) == 1 and out["training"][0]["forget_loss"] != 0
    # Prepared models are cached: a second method reuses Original and Retrain.
    again = call_json(capsys, *[a if a != "npo" else "task_vector" for a in argv])
    assert again["metrics"]["Original"] == out["metrics"]["Original"]
    assert again["config"]["method"]["name"] == "task_vector"
    assert again["training"][0]["forget_loss"] != out["training"][0]["forget_loss"]


def test_wmdp_run_end_to_end_with_rmu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = "wmdp.source.generator={seed: 0, bio_entities: 3, cyber_entities: 3, retain_entities: 4}"
    rmu = ["method.layer=1", "method.trainable_layers=1", "method.steering_coeff=10"]
    out = call_json(
        capsys, "wmdp-generated", "--method", "rmu", *sets(*TINY, small, *rmu, f"cache_dir={tmp_path}")
    )
    assert list(out["metrics"]) == ["Original", "Retrain", "rmu"]
    for metrics in out["metrics"].values():
        assert {"wmdp_bio", "wmdp_cyber", "mmlu", "wmdp_forget"} <= set(metrics)
        assert metrics["wmdp_forget"] == pytest.approx(1 - (metrics["wmdp_bio"] + metrics["wmdp_cyber"]) / 2)
    assert out["config"]["method"] == {
        "name": "rmu", "layer": 1, "steering_coeff": 10.0, "retain_weight": 100.0, "trainable_layers": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["muse-news-generated", "--method", "idk_dpo"], "needs a QA benchmark"),
        (["wmdp-generated", "--method", "idk_nll"], "needs a QA benchmark"),
        (
            ["muse-news-generated", "--set", "muse.corpus=poems"],
            "muse.corpus: Input should be 'news' or 'books'",
        ),
        (["wmdp-generated", "--set", "wmdp.subsets=[bio, physics]"], "wmdp.subsets.1: Input should be"),
        (["muse-news-generated", "--set", "muse.source.kind=local"], "kind=local needs path"),
    ],
)
def test_bad_input_exits_2_before_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    cache = tmp_path / "cache"
    assert run.main([*argv, "--set", f"cache_dir={cache}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and expected in line
    assert not (cache / "prepared").exists()


def test_missing_local_muse_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["muse-news-generated", *sets("muse.source.kind=local", f"muse.source.path={tmp_path / 'none'}")]
    assert run.main([*argv, "--set", f"cache_dir={tmp_path / 'cache'}"]) == 2
    assert "data folder does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["muse-news", "muse-books", "wmdp", "muse-news-generated", "wmdp-generated"])
def test_sweep_files_load(name: str) -> None:
    from raysimnpo.config.sweep import load_sweep_config

    loaded = load_sweep_config(name)
    assert loaded.run.benchmark == name.split("-")[0]
    assert [o.metric for o in loaded.search.objectives] in (
        ["privleak_abs", "knowmem_retain"],
        ["wmdp_forget", "mmlu"],
    )


def test_sweep_refuses_idk_methods_on_raw_text() -> None:
    from raysimnpo.config.sweep import load_sweep_config
    from raysimnpo.errors import UserInputError

    with pytest.raises(
        UserInputError, match=r"search.methods: \['idk_dpo'\] cannot run on benchmark wmdp; allowed: ga, "
    ):
        load_sweep_config("wmdp-generated", ["search.methods=[rmu, idk_dpo]"])
