"""fp32 master weights with bf16 compute for every training path (DESIGN §7).

A model loaded in bfloat16 and trained with AdamW in bfloat16 barely moves: bf16 keeps about 3
significant digits, so an update of lr 1e-5 on a weight of magnitude 0.02 (its spacing there is
1.2e-4) rounds away. FSDP2 avoids this with `MixedPrecisionPolicy(param_dtype=bfloat16)` over float32
shards (`sharding.shard_model`); `keeps_fp32_master_weights` gives the unsharded path (one process,
in-process prepare, relearning) the same arithmetic: the parameters are upcast to float32 for the
optimizer, forward and backward run under `torch.autocast(bfloat16)`, and at the end the parameters
are cast back to the dtype the model was loaded in, which is the dtype it is saved in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=nn.Module)
HALF_DTYPES = (torch.bfloat16, torch.float16)


def loaded_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point parameters (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    # Parameters only: buffers such as RoPE's inv_freq stay float32, as from_pretrained leaves them.
    # Assigning .data keeps the Parameter objects, so an optimizer built on them stays valid.
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


@contextmanager
def fp32_master_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, a model loaded in bf16 (or fp16) holds float32 parameters (the master
    weights AdamW updates) and computes in bfloat16; on leaving it, the parameters are cast back.

    A float32 model is left as it is (it computes in float32), and so is an FSDP2 module, whose
    MixedPrecisionPolicy already keeps float32 shards and computes in bfloat16. autocast keeps one
    bf16 copy of each weight while the block runs (shared by a step's forward passes, 2 B/param);
    the block spans optimizer steps, so that cache is emptied after every step, when it turns stale.
    """
    dtype = loaded_dtype(model)
    if dtype not in HALF_DTYPES or _is_sharded(model):
        yield
        return
    device = next(model.parameters()).device
    _cast_parameters(model, torch.float32)
    stale = register_optimizer_step_post_hook(lambda *_: torch.clear_autocast_cache())
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    finally:
        stale.remove()
        _cast_parameters(model, dtype)


def keeps_fp32_master_weights(
    train: Callable[Concatenate[M, P], R],
) -> Callable[Concatenate[M, P], R]:
    """Decorate a training function whose first argument is the model: it runs inside
    `fp32_master_weights(model)`."""

    @functools.wraps(train)
    def wrapper(model: M, *args: P.args, **kwargs: P.kwargs) -> R:
        with fp32_master_weights(model):
            return train(model, *args, **kwargs)

    return wrapper
