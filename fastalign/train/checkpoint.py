"""Atomic, resumable checkpoints: model, optimizer, scheduler, RNG and data position.

A checkpoint is written into a temporary directory next to its final name and renamed into
place only when complete, so an interruption mid-write leaves the previous checkpoint intact
and loadable. Only the newest ``keep_last`` complete checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any], *, keep_last: int) -> Path:
    """Write ``state`` (a dict of picklable objects and tensors) as checkpoint ``step``."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    partial = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}-", dir=root))
    try:
        torch.save(state, partial / "state.pt")
        with open(partial / "state.pt", "rb+") as handle:
            os.fsync(handle.fileno())
        if final.exists():  # re-saving a step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


SHARDED_MARKER = "trainer.pt"  # written last by a distributed run (see checkpoint_sharded.py)


def is_sharded(path: Path) -> bool:
    return (path / SHARDED_MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (single-process or sharded), oldest first; temporary directories
    are ignored."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir()
             if _NAME.match(path.name) and ((path / "state.pt").is_file() or is_sharded(path))]
    return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))


def load_latest_checkpoint(output_dir: str | Path) -> dict[str, Any] | None:
    """The newest complete single-process checkpoint's state, or ``None`` when there is none."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return None
    if is_sharded(checkpoints[-1]):
        world = torch.load(checkpoints[-1] / SHARDED_MARKER, map_location="cpu", weights_only=False)["world_size"]
        raise ValueError(f"{checkpoints[-1]} was written by a distributed run of {world} processes: resume it under "
                         f"torchrun with --nproc-per-node {world} (same strategy)")
    return torch.load(checkpoints[-1] / "state.pt", map_location="cpu", weights_only=False)
