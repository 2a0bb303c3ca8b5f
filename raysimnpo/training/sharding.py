"""FSDP2 data parallelism for the training loop (DESIGN §7): shard, gather per-sequence terms, save.

`shard_model` applies `fully_shard` (FSDP2) to every decoder block and then to the root, so each
rank holds 1/world_size of every parameter and of the AdamW state; a block's full weights exist
only while it runs. CPU ranks (gloo) train in float32; CUDA ranks (NCCL) keep float32 master
weights and compute in bfloat16, reducing gradients in float32.

Exact data parallelism: FSDP2 averages the ranks' gradients, which equals the single-process
gradient only when each rank's loss is the global loss. The method losses are means over the
sequences (eqs. 2 and 4) or over the tokens (eq. 1's retain NLL, GA) of a batch, so a rank that
evaluates them on its own slice gets a different normaliser. `gather_rows` / `gather_step_terms`
give every rank the per-sequence terms of the whole global batch (differentiable: ℓ_i, |y_i|, and
the token-level KL and squared errors summed per sequence with their counts), so the method loss is
evaluated once on the global batch, exactly as a single process would.

Checkpoints: `full_state_dict` gathers a full CPU state dict on rank 0 and `save_hf_checkpoint`
writes it as a Hugging Face folder (safetensors, config, tokenizer, prompt-format file) that
`from_pretrained` loads; both are collectives that every rank must call.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.formatting import PromptFormat
from ..methods import StepTerms, sequence_fields
from ..models import write_prompt_format


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when torch.distributed is not set up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank0_decides(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a broadcast), so that all ranks take the same branch of a
    collective code path (e.g. stopping training early); `flag` itself without a process group."""
    _, size = rank_and_world_size()
    if size == 1:
        return flag
    decision = [flag]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a causal LM, in order.

    Hugging Face models name their block class in `_no_split_modules` (LlamaDecoderLayer,
    GPT2Block, ...); otherwise the longest `nn.ModuleList` whose children share one class is taken
    (model.model.layers for Llama/Mistral/Qwen, transformer.h for GPT-2).
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names]
        if blocks:
            return blocks
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            children = list(module)
            if len({type(c) for c in children}) == 1:
                best = children
    if not best:
        raise ValueError(f"{type(model).__name__}: found no list of repeated decoder blocks to shard")
    return best


def _mesh_device_type() -> str:
    backend = str(dist.get_backend()).lower()
    return "cuda" if "nccl" in backend and torch.cuda.is_available() else "cpu"


def shard_model(
    model: PreTrainedModel, device_mesh: DeviceMesh | None = None, *, mixed_precision: bool | None = None
) -> PreTrainedModel:
    """Shard `model` in place with FSDP2 over `device_mesh` (default: all ranks of the default
    process group): `fully_shard` on each decoder block, then on the root (embeddings, final norm,
    LM head, tied or not). Returns the same object, now also an `FSDPModule`.

    `mixed_precision` (default: on for a CUDA mesh) keeps float32 master weights and runs forward
    and backward in bfloat16 with float32 gradient reduction; CPU meshes stay in float32. Needs an
    initialised torch.distributed process group; the model is moved to the mesh's device.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model: torch.distributed is not initialised; start the ranks first")
    if isinstance(model, FSDPModule):
        raise ValueError(f"shard_model: {type(model).__name__} is already sharded")
    mesh = device_mesh or init_device_mesh(_mesh_device_type(), (dist.get_world_size(),))
    use_mp = mesh.device_type == "cuda" if mixed_precision is None else mixed_precision
    policy = MixedPrecisionPolicy()
    # float32 master weights on every mesh (precision.py): upcast a model loaded in bf16 first.
    model.float()
    if use_mp:  # bf16 compute over them
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 with per-rank row counts that may differ; backward sums the
    gradient of every rank's copy (all_reduce) and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:
        rank, size = dist.get_rank(), dist.get_world_size()
        count = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
        counts = [torch.zeros_like(count) for _ in range(size)]
        dist.all_gather(counts, count)
        rows = [int(c.item()) for c in counts]
        padded = local.new_zeros((max(rows), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows = sum(rows[:rank]), rows[rank]
        return torch.cat([part[:n] for part, n in zip(parts, rows, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.start : ctx.start + ctx.rows]


def gather_rows(local: Tensor) -> Tensor:
    """Concatenate every rank's `local` [b_r, ...] into [Σ b_r, ...] (rank order), differentiably.

    When every rank computes the same loss L from the gathered tensor, each rank's local rows get
    the summed gradient world_size · ∂L/∂rows; FSDP's average over ranks then yields exactly
    the single-process gradient of L. Without a process group it returns `local`.
    """
    _, size = rank_and_world_size()
    if size == 1:
        return local
    return _GatherRows.apply(local)


def gather_step_terms(terms: StepTerms, fields: Iterable[str] | None = None) -> StepTerms:
    """`terms` with the per-sequence `fields` (default: every field that is set; a method's
    `Method.gathered`) concatenated over the ranks, so a method loss (`raysimnpo.methods`) evaluated
    on the result is the global-batch loss. Every StepTerms field holds one value per sequence
    (token-level terms are summed per sequence), so any of them can be gathered."""
    _, size = rank_and_world_size()
    if size == 1:
        return terms
    names = sequence_fields() if fields is None else tuple(fields)
    updates = {name: gather_rows(getattr(terms, name)) for name in names if getattr(terms, name) is not None}
    return dataclasses.replace(terms, **updates)


def full_state_dict(model: nn.Module) -> dict[str, Tensor] | None:
    """The full (unsharded) state dict on CPU on rank 0, None on the other ranks.

    A collective: every rank must call it. An unsharded model (one process) returns CPU copies of
    its own state dict.
    """
    if not isinstance(model, FSDPModule):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank, _ = rank_and_world_size()
    return cast(dict[str, Tensor], state) if rank == 0 else None


def save_hf_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write `model` as a Hugging Face folder at `path` from rank 0, as `recipes.workspace.save_model` does:
    safetensors weights (from the gathered state dict), config, tokenizer and the prompt-format
    file (`models.write_prompt_format`, the one the loader reads). Floating tensors are cast to `dtype` when given (e.g. back to the bf16 the
    model was loaded in). `extra_files` (name -> text) are written into the folder too. The folder
    is written aside and renamed, so `path` is never half-written.

    A collective: every rank must call it; only rank 0 writes.
    """
    state = full_state_dict(model)
    rank, _ = rank_and_world_size()
    if rank != 0:
        return
    assert state is not None
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        model.save_pretrained(staging, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_prompt_format(staging, prompt_format)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
