"""Sharded checkpoints of distributed runs through ``torch.distributed.checkpoint`` (DCP).

Layout of ``checkpoints/step-XXXXXXXX/``: ``dcp/`` (model and optimizer state, each rank writing
its shards; DDP's replicated tensors are written once), ``rank-NNNNN.pt`` (each rank's RNG and
its own trainer state, e.g. PPO's current rollout) and ``trainer.pt`` (step, data position, scheduler, history, world size; written last by rank 0).
Like single-process checkpoints they are written into a temporary directory and renamed into
place when complete, and only the newest ``keep_last`` are kept. Resuming needs the same world
size and strategy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fastalign.train.checkpoint import (
    SHARDED_MARKER,
    checkpoint_dir,
    is_sharded,
    list_checkpoints,
    restore_rng,
    rng_state,
)
from fastalign.train.distributed import DistributedEnv, barrier, broadcast_object


def _rank_file(path: Path, rank: int) -> Path:
    return path / f"rank-{rank:05d}.pt"


def save_sharded_checkpoint(output_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            trainer_state: dict[str, Any], env: DistributedEnv, *, keep_last: int,
                            rank_state: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it with its shard of ``model`` / ``optimizer`` and its own
    ``rank_state``; ``trainer_state`` is rank 0's (the same on every rank)."""
    root = checkpoint_dir(output_dir)
    name = None
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        name = tempfile.mkdtemp(prefix=f".step-{step:08d}-", dir=root)
    partial = Path(broadcast_object(name, env))
    final = root / f"step-{step:08d}"
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(partial / "dcp"))
        torch.save({"rng": rng_state(), "local": rank_state or {}}, _rank_file(partial, env.rank))
        barrier(env)
        if env.is_main:
            marker = partial / (SHARDED_MARKER + ".tmp")
            torch.save({**trainer_state, "world_size": env.world_size, "strategy": env.strategy}, marker)
            os.replace(marker, partial / SHARDED_MARKER)
            if final.exists():  # re-saving a step (e.g. after resume): replace it
                shutil.rmtree(final)
            os.replace(partial, final)
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    barrier(env)
    return final


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                            env: DistributedEnv) -> dict[str, Any]:
    """Collective: load ``path`` into ``model`` / ``optimizer`` (in place) and this rank's RNG;
    returns the trainer state with this rank's own state under ``"local"``."""
    if not is_sharded(path):
        raise ValueError(f"{path} is a single-process checkpoint: resume it without torchrun")
    trainer_state = torch.load(path / SHARDED_MARKER, map_location="cpu", weights_only=False)
    if (trainer_state["world_size"], trainer_state["strategy"]) != (env.world_size, env.strategy):
        raise ValueError(
            f"{path} was written by {trainer_state['world_size']} processes with strategy "
            f"{trainer_state['strategy']!r}; this run has {env.world_size} with {env.strategy!r}: resume with the same"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    mine = torch.load(_rank_file(path, env.rank), map_location="cpu", weights_only=False)
    restore_rng(mine["rng"])
    return {**trainer_state, "local": mine["local"]}
