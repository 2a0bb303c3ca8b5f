"""The training loop's state at an epoch boundary, saved so that restarted workers resume exactly.

A Ray Train worker that dies (a killed process, a lost node) is restarted by Train's FailureConfig;
the restarted workers load the last epoch's state and `training.train` goes on from the next epoch
with the same weights, AdamW moments, learning-rate schedule and RNG streams, so the finished run
equals one that was never interrupted.

Layout of a state folder (no pickle: tensors in safetensors, the rest in JSON):
  weights.safetensors    the full (unsharded) model state dict
  optimizer.safetensors  AdamW's per-parameter state, keys "<parameter name>/<exp_avg|exp_avg_sq|step>"
  state.json             epochs done, their report rows, optimizer param groups, scheduler state,
                         the global torch RNG state (dropout) as a list of bytes, and the caller's
                         `extra` JSON (e.g. the gradient weights logged so far)

Under FSDP2 both functions are collectives: every rank gathers (save) or loads (load) full tensors
and keeps its own shard; only rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .sharding import rank_and_world_size

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def save_training_state(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    rows: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the state after `len(rows)` epochs to `directory` (written aside, then renamed)."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim = get_state_dict(model, optimizer, options=full)
    rank, _ = rank_and_world_size()
    if rank != 0:
        return
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        # clone: tied weights share storage, which safetensors refuses to write twice
        save_file({k: v.detach().clone().contiguous() for k, v in weights.items()}, staging / WEIGHTS_FILE)
        moments = {
            f"{name}/{key}": torch.as_tensor(value).detach().clone().contiguous()
            for name, per_param in optim["state"].items()
            for key, value in per_param.items()
        }
        save_file(moments, staging / OPTIMIZER_FILE)
        state = {
            "epochs_done": len(rows),
            "rows": rows,
            "param_groups": optim["param_groups"],
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state().tolist(),
            "extra": extra or {},
        }
        (staging / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_training_state(
    directory: str | Path, model: torch.nn.Module, optimizer: Optimizer, scheduler: LRScheduler
) -> list[dict[str, float]]:
    """Restore weights, optimizer, schedule and RNG from `directory`; returns the done epochs' rows."""
    folder = Path(directory)
    state = json.loads((folder / STATE_FILE).read_text())
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(folder / OPTIMIZER_FILE).items():
        name, _, field = key.rpartition("/")
        moments.setdefault(name, {})[field] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
    set_state_dict(
        model,
        optimizer,
        model_state_dict=load_file(folder / WEIGHTS_FILE),
        optim_state_dict={"state": moments, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    rows: list[dict[str, float]] = state["rows"]
    if len(rows) != state["epochs_done"]:
        raise ValueError(f"{folder / STATE_FILE}: {len(rows)} rows for {state['epochs_done']} epochs")
    return rows


def saved_extra(directory: str | Path) -> dict[str, Any]:
    """The `extra` JSON saved with a training state."""
    extra: dict[str, Any] = json.loads((Path(directory) / STATE_FILE).read_text()).get("extra", {})
    return extra
