"""Sharded checkpoints of distributed runs through ``torch.distributed.checkpoint`` (DCP).

Layout of ``checkpoints/step-XXXXXXXX/``: ``dcp/`` (model and optimizer state, each rank writing
its shards; DDP's replicated tensors are written once), ``rank-NNNNN.pt`` (each rank's RNG and
its own trainer state, e.g. PPO's current rollout) and ``trainer.pt`` (step, data position,
scheduler, history, world size; written last by rank 0). The ``.pt`` files hold plain data only
and are read with ``weights_only=True``. Like single-process checkpoints they are written into a
temporary directory and installed with ``checkpoint.install`` (never a moment without a complete
copy), and only the newest ``keep_last`` are kept. Resuming needs the same world size and
strategy. Every function here is collective: all ranks call it, and a failure on one rank is
raised on every rank (no rank is left waiting in a collective).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fastalign.train.checkpoint import (
    SHARDED_MARKER,
    checkpoint_dir,
    install,
    intact_message,
    is_sharded,
    list_checkpoints,
    move_aside,
    new_partial,
    recover,
    rotate,
    step_name,
)
from fastalign.train.checkpoint_io import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    from_plain,
    load_file,
    restore_rng,
    rng_state,
    save_file,
    to_plain,
)
from fastalign.train.distributed import DistributedEnv, barrier, broadcast_object, global_sum
from fastalign.train.lifecycle import notice


def _rank_file(path: Path, rank: int) -> Path:
    return path / f"rank-{rank:05d}.pt"


def _all_ok(env: DistributedEnv, ok: bool) -> bool:
    """Whether every rank reports ``ok`` (a collective)."""
    (failures,) = global_sum([0.0 if ok else 1.0], env)
    return failures == 0


def save_sharded_checkpoint(output_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            trainer_state: dict[str, Any], env: DistributedEnv, *, keep_last: int,
                            rank_state: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it with its shard of ``model`` / ``optimizer`` and its own
    ``rank_state``; ``trainer_state`` is rank 0's (the same on every rank)."""
    root = checkpoint_dir(output_dir)
    name = None
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        name = str(new_partial(root, step))
    partial = Path(broadcast_object(name, env))
    final = root / step_name(step)
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(partial / "dcp"))
        _write_everywhere(env, lambda: save_file({"rng": rng_state(), "local": to_plain(rank_state or {})},
                                                 _rank_file(partial, env.rank)), partial)

        def finish() -> None:
            save_file({**trainer_state, "world_size": env.world_size, "strategy": env.strategy},
                      partial / SHARDED_MARKER)
            install(partial, final)
            rotate(output_dir, keep_last)

        _write_everywhere(env, finish if env.is_main else None, partial)
    except CheckpointWriteError as error:
        if env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointWriteError(error.errno, f"{error.strerror}; {intact_message(output_dir)}") from error
    except BaseException:
        if env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _write_everywhere(env: DistributedEnv, write, partial: Path) -> None:
    """Run ``write`` on this rank (if given), then agree: a failure anywhere raises everywhere."""
    error = None
    if write is not None:
        try:
            write()
        except OSError as caught:
            error = caught
    if not _all_ok(env, error is None):
        if error is not None:
            raise error
        raise CheckpointWriteError(errno.EIO, f"another rank failed while writing {partial}")


def latest_sharded_checkpoint(output_dir: str | Path, env: DistributedEnv) -> Path | None:
    """Collective: the newest complete sharded checkpoint every rank can read, or ``None``.

    Stale temporaries are removed first (rank 0). A damaged newest checkpoint is reported and
    moved aside, and the next older one is tried. A file that would run code when loaded, or a
    checkpoint of another world size or strategy, raises on every rank.
    """
    if env.is_main:
        recover(output_dir)
    barrier(env)
    for path in reversed(list_checkpoints(output_dir)):
        status, message = _check(path, env)
        (unsafe, corrupt, mismatched) = global_sum([float(status == "unsafe"), float(status == "corrupt"),
                                                    float(status == "mismatch")], env)
        if unsafe or mismatched:
            kind = UnsafeCheckpointError if unsafe else CheckpointError
            raise kind(message or f"another rank refused a file of {path}")
        if corrupt:
            if env.is_main:
                moved = move_aside(path)
                notice(f"checkpoint {path.name} is unreadable ({message or 'on another rank'}); moved it to "
                       f"{moved.name}, trying an older one")
            barrier(env)
            continue
        return path
    return None


def _check(path: Path, env: DistributedEnv) -> tuple[str, str | None]:
    """This rank's verdict on checkpoint ``path``: ``ok``, ``corrupt``, ``unsafe`` or ``mismatch``."""
    if not is_sharded(path):
        return "mismatch", f"{path} is a single-process checkpoint: resume it without torchrun"
    try:
        trainer_state = load_file(path / SHARDED_MARKER)
        if not isinstance(trainer_state, dict) or "world_size" not in trainer_state:
            return "corrupt", f"{path / SHARDED_MARKER} holds no trainer state"
        if (trainer_state["world_size"], trainer_state.get("strategy")) != (env.world_size, env.strategy):
            return "mismatch", (
                f"{path} was written by {trainer_state['world_size']} processes with strategy "
                f"{trainer_state.get('strategy')!r}; this run has {env.world_size} with {env.strategy!r}: "
                "resume with the same")
        load_file(_rank_file(path, env.rank))
    except UnsafeCheckpointError as error:
        return "unsafe", str(error)
    except CorruptCheckpointError as error:
        return "corrupt", str(error)
    if not (path / "dcp" / ".metadata").is_file():
        return "corrupt", f"{path / 'dcp'} has no .metadata"
    return "ok", None


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                            env: DistributedEnv) -> dict[str, Any]:
    """Collective: load ``path`` into ``model`` / ``optimizer`` (in place) and this rank's RNG;
    returns the trainer state with this rank's own state under ``"local"``."""
    if not is_sharded(path):
        raise CheckpointError(f"{path} is a single-process checkpoint: resume it without torchrun")
    trainer_state = load_file(path / SHARDED_MARKER)
    if (trainer_state["world_size"], trainer_state["strategy"]) != (env.world_size, env.strategy):
        raise CheckpointError(
            f"{path} was written by {trainer_state['world_size']} processes with strategy "
            f"{trainer_state['strategy']!r}; this run has {env.world_size} with {env.strategy!r}: resume with the same"
        )
    mine = load_file(_rank_file(path, env.rank))
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    restore_rng(mine["rng"])
    return {**trainer_state, "local": from_plain(mine["local"])}
