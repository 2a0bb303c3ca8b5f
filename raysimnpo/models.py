"""Model presets, tokenizers and prompt formats (DESIGN §3 `models.py`).

`load_model_and_tokenizer(name, ...)` is the one way the rest of the project gets a model:

- ``"tiny"``: a small `LlamaForCausalLM` built in-process from `TinyModelConfig`, with a byte-level BPE
  tokenizer trained on the benchmark's own text and cached by content hash. It is what a CPU box with
  no network runs (DESIGN §1 (a)); it is trained from scratch, so it knows only what it is fine-tuned on.
- ``"smollm2-135m"``: HuggingFaceTB/SmolLM2-135M-Instruct, from ``<cache_dir>/models/smollm2-135m`` when
  that folder exists (written offline by ``python -m raysimnpo import-model smollm2-135m``), else the hub.
- any other string: a local Hugging Face folder (``config.json`` present) or a hub id ``org/name``,
  e.g. ``locuslab/tofu_ft_llama2-7b``, the TOFU paper setting.

The prompt format tells `raysimnpo.data.formatting` how a question becomes a prompt: ``"llama2-chat"``
(``[INST] q [/INST]``, the TOFU/SimNPO Llama-2-chat models), ``"chat-template"`` (the tokenizer's own
chat template) or ``"plain"`` (a plain question/answer layout, for models trained from scratch). A saved
fine-tune can record its base's format with `write_prompt_format`; a model without one gets the
format `raysimnpo.data.formatting.detect_prompt_format` finds. The offline import of smollm2-135m is
`raysimnpo.gguf` (`python -m raysimnpo import-model smollm2-135m`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle  # only its exception type: pickled weights are refused, never loaded
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from safetensors import SafetensorError

if TYPE_CHECKING:  # torch and transformers load with the first model, not when configs are validated
    import torch
    from transformers import (
        LlamaForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

    from .data.formatting import PromptFormat

from .config.base import Frozen
from .data import hub
from .errors import UserInputError, first_line

PRESETS: dict[str, str] = {
    "tiny": "small Llama built in-process from TinyModelConfig + byte-level BPE tokenizer trained on the data",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct (offline: python -m raysimnpo import-model smollm2-135m)",
}
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_FOLDER = "smollm2-135m"

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Bump when the tokenizer recipe changes, so old cache folders are not reused.
TOKENIZER_RECIPE_VERSION = 1
_DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class TinyModelConfig(Frozen):
    """Shape of the ``tiny`` preset: a Llama decoder (RMSNorm, RoPE, SwiGLU) trained from scratch.

    Sized so that fine-tuning from scratch memorises ~1000 QA pairs within 40-60 epochs on 2 CPU cores:
    1.37 M parameters with the 2000-token tokenizer; one forward+backward+AdamW step on a 16 x 64 batch
    takes ~0.1 s on an idle 2-core box. Measured on the first 1000 rows of TOFU `full` (43 answer tokens
    on average, longer than the generated data): AdamW lr 2e-3, one warm-up epoch, linear decay over
    50 epochs reaches 97% teacher-forced answer-token accuracy at epoch 15 and 99.5% (82% of answers
    entirely right) at epoch 25. Such a model needs a learning rate near 1e-3, not the 1e-5 used to
    fine-tune pretrained 7B models. `vocab_size` and `tokenizer_min_frequency` set the BPE tokenizer
    trained on the corpus (the model's vocabulary is the tokenizer's actual size, which can be smaller).
    """

    hidden_size: int = Field(default=128, gt=0)
    num_hidden_layers: int = Field(default=4, gt=0)
    num_attention_heads: int = Field(default=4, gt=0)
    num_key_value_heads: int = Field(default=4, gt=0)
    intermediate_size: int = Field(default=384, gt=0)
    max_position_embeddings: int = Field(default=512, ge=16)
    rope_theta: float = Field(default=10000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    initializer_range: float = Field(default=0.02, gt=0)
    tie_word_embeddings: bool = False
    vocab_size: int = Field(default=2000, ge=300, description="target size of the byte-level BPE vocabulary")
    tokenizer_min_frequency: int = Field(
        default=2, ge=1, description="BPE merges need a pair seen this often"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        return self


@dataclass(frozen=True)
class LoadedModel:
    """A model with its tokenizer, the prompt format its prompts use, and the name it was asked by.

    Unpacks as ``model, tokenizer, prompt_format = loaded`` (the older tuple interface).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    name: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.prompt_format))


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16 matmuls are ~100x slower there, DESIGN §9) and bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if dtype not in _DTYPES:
        raise UserInputError(f"model.dtype: {dtype!r} is not a dtype; allowed: auto, {', '.join(_DTYPES)}")
    return getattr(torch, dtype)  # type: ignore[no-any-return]


def load_model_and_tokenizer(
    model: str,
    *,
    dtype: str = "auto",
    cache_dir: Path,
    tokenizer_corpus: Iterable[str] | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    tiny: TinyModelConfig | None = None,
) -> LoadedModel:
    """Load a preset, a local Hugging Face folder or a hub id; the model is on CPU in `dtype`.

    ``tiny`` needs `tokenizer_corpus` (the texts its tokenizer is trained on) and is initialised from
    `seed`, so the same seed gives identical weights. Tokenizers without a pad token get pad = eos.
    """
    torch_dtype = resolve_dtype(dtype)
    cache_dir = Path(cache_dir).expanduser()
    if model == "tiny":
        if tokenizer_corpus is None:
            raise UserInputError(
                "model.name: preset 'tiny' trains its tokenizer on the data, but no tokenizer_corpus was given"
            )
        config = tiny or TinyModelConfig()
        tiny_tokenizer = build_tiny_tokenizer(tokenizer_corpus, config, cache_dir)
        tiny_model = build_tiny_model(tiny_tokenizer, config, seed=seed, dtype=torch_dtype)
        return LoadedModel(tiny_model, tiny_tokenizer, "plain", "tiny")
    if model == "smollm2-135m":
        local = cache_dir / "models" / SMOLLM2_FOLDER
        source = str(local) if (local / "config.json").is_file() else SMOLLM2_HUB_ID
        net, tokenizer = _load_pretrained(source, torch_dtype, trust_remote_code, hint_import=True)
        return LoadedModel(net, tokenizer, "chat-template", model)

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(
                f"model.name: {path} has no config.json, so it is not a Hugging Face model folder; "
                f"allowed: {_allowed()}"
            )
        _check_model_type(path / "config.json", trust_remote_code)
        net, tokenizer = _load_pretrained(str(path), torch_dtype, trust_remote_code)
        return LoadedModel(net, tokenizer, _folder_prompt_format(path, tokenizer), model)
    if path.exists() or not looks_like_hub_id(model):
        raise UserInputError(
            f"model.name: {model!r} is not a preset, an existing model folder or a hub id; allowed: {_allowed()}"
        )
    net, tokenizer = _load_pretrained(model, torch_dtype, trust_remote_code)
    from .data.formatting import detect_prompt_format

    return LoadedModel(net, tokenizer, detect_prompt_format(model, tokenizer), model)


def write_prompt_format(folder: Path, prompt_format: PromptFormat) -> None:
    """Record the prompt format next to a saved checkpoint (e.g. an Original fine-tuned from a Llama-2
    chat model), so loading the folder gives back the format of the model it came from."""
    from .data.formatting import PROMPT_FORMAT_FILE, PROMPT_FORMATS  # loads transformers

    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format {prompt_format!r}; allowed: {', '.join(PROMPT_FORMATS)}")
    (Path(folder) / PROMPT_FORMAT_FILE).write_text(json.dumps({"prompt_format": prompt_format}) + "\n")


def _folder_prompt_format(path: Path, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    from .data.formatting import PROMPT_FORMAT_FILE, PROMPT_FORMATS, detect_prompt_format

    marker = path / PROMPT_FORMAT_FILE
    if marker.is_file():
        recorded = _read_json(marker).get("prompt_format")
        if recorded not in PROMPT_FORMATS:
            raise UserInputError(
                f"{marker}: prompt_format {recorded!r}; allowed: {', '.join(PROMPT_FORMATS)}"
            )
        return recorded  # type: ignore[no-any-return]
    saved_from = _read_json(path / "config.json").get("_name_or_path")
    return detect_prompt_format(
        path.resolve().name, tokenizer, saved_from if isinstance(saved_from, str) else None
    )


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` with hub-legal characters (a bare name is taken as a typo, not a legacy hub id)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def _allowed() -> str:
    return f"a preset ({', '.join(PRESETS)}), a local folder with config.json, or a hub id org/name"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return data


def _check_model_type(config_file: Path, trust_remote_code: bool) -> None:
    """A local folder's config.json must be JSON naming an architecture this transformers knows
    (unless trust_remote_code lets the folder bring its own)."""
    from transformers import CONFIG_MAPPING

    model_type = _read_json(config_file).get("model_type")
    if not trust_remote_code and model_type not in CONFIG_MAPPING:
        raise UserInputError(
            f"{config_file}: model_type {model_type!r} is not an architecture transformers knows; allowed: "
            "a causal LM type such as llama, mistral, qwen2 (or set model.trust_remote_code=true)"
        )


def _load_pretrained(
    source: str, dtype: torch.dtype, trust_remote_code: bool, *, hint_import: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    folder = Path(source)
    # Prefer safetensors; a local folder with only .bin weights still loads (torch.load weights_only).
    use_safetensors = True if folder.is_dir() and any(folder.glob("*.safetensors")) else None
    hint = (
        "; run `python -m raysimnpo.models import smollm2-135m` to install it offline" if hint_import else ""
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = "folder" if folder.is_dir() else "hub id"
    part = "tokenizer"
    if not folder.is_dir():
        hub.prefer_offline_when_unreachable()
    # Warnings of a load that ends in a refusal (torch's notes on a pickle it then refuses) would
    # precede the one error line: held back, and shown only when the load succeeds.
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("default")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            part = "model"
            net = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=use_safetensors
            )
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met more than tensors
            raise UserInputError(
                f"model.name: the weights of {where} {source!r} hold pickled Python objects, which are never "
                "loaded; allowed: safetensors files or torch files with tensors only (convert with "
                "save_pretrained)"
            ) from exc
        except SafetensorError as exc:  # a truncated or foreign file named *.safetensors
            raise UserInputError(
                f"model.name: the weights of {where} {source!r} are not readable safetensors "
                f"({first_line(exc)}); re-save the model with save_pretrained"
            ) from exc
        except (OSError, ValueError) as exc:
            # transformers raises OSError for missing files and ValueError for an unknown model_type
            # or a folder without tokenizer files: both are a folder or id the user named.
            first = first_line(exc)
            if part == "tokenizer" and folder.is_dir():
                hint += (
                    "; a model folder needs the tokenizer files save_pretrained writes (tokenizer.json, ...)"
                )
            if not folder.is_dir() and hub.is_offline():
                hint += "; the hub is not reachable from here (offline), so only a cached copy could load"
            raise UserInputError(
                f"model.name: could not load the {part} of {where} {source!r} ({first}){hint}"
            ) from exc
    for note in held:
        warnings.showwarning(note.message, note.category, note.filename, note.lineno)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _sync_special_ids(net, tokenizer)
    return net, tokenizer


def _sync_special_ids(net: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Batched generation needs a pad id on the model side too."""
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(net, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------- tiny


def tokenizer_cache_key(texts: list[str], config: TinyModelConfig) -> str:
    """sha256 over the recipe settings and every corpus text (length-prefixed, in order)."""
    settings = {
        "recipe": TOKENIZER_RECIPE_VERSION,
        "vocab_size": config.vocab_size,
        "min_frequency": config.tokenizer_min_frequency,
        "special_tokens": list(SPECIAL_TOKENS),
        "model_max_length": config.max_position_embeddings,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def build_tiny_tokenizer(
    corpus: Iterable[str], config: TinyModelConfig, cache_dir: Path
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenisation, so any text encodes) trained on `corpus`, prepending
    ``<s>`` like Llama's tokenizer; cached in ``cache_dir/tokenizers/<sha256>/`` and loaded from there."""
    texts = list(corpus)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserInputError("tokenizer_corpus: must be a non-empty sequence of strings (the training texts)")
    folder = Path(cache_dir) / "tokenizers" / tokenizer_cache_key(texts, config)
    if (folder / "tokenizer.json").is_file():
        return _load_tiny_tokenizer(folder)
    tokenizer = _train_tiny_tokenizer(texts, config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name[:16]}.partial-", dir=folder.parent))
    partial.chmod(0o755)
    try:
        tokenizer.save_pretrained(str(partial))
        try:
            os.replace(partial, folder)
        except OSError:  # another process finished the same folder first; theirs is identical
            if not (folder / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return _load_tiny_tokenizer(folder)


def _train_tiny_tokenizer(texts: list[str], config: TinyModelConfig) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.tokenizer_min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=config.max_position_embeddings,
    )


def _load_tiny_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
        raise UserInputError(
            f"{folder}: cached tokenizer lacks <pad>/<s>/</s>; delete the folder to retrain it"
        )
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig, *, seed: int, dtype: torch.dtype
) -> LlamaForCausalLM:
    """A randomly initialised Llama (normal(0, initializer_range) weights) drawn from `seed` alone, in
    float32 and then rounded to `dtype` (so CPU and GPU runs start from the same weights); the global
    torch RNG is left as it was."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LlamaForCausalLM(llama)
    # Cast parameters only: RoPE's inv_freq buffer stays float32, as from_pretrained(dtype=...) leaves it.
    for param in net.parameters():
        param.data = param.data.to(dtype)
    net.config.dtype = dtype
    _sync_special_ids(net, tokenizer)
    net.generation_config.bos_token_id = tokenizer.bos_token_id
    net.generation_config.eos_token_id = tokenizer.eos_token_id
    return net
