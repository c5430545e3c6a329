"""Reading and writing one checkpoint file, safely.

Checkpoints are shared between machines and people, so loading one must never run code: every
file is read with ``torch.load(..., weights_only=True)``, which only rebuilds tensors, numbers,
strings, lists, tuples and dicts. What the trainers store is kept to those types: the RNG states
are converted here (``rng_state`` / ``restore_rng``), and ``PackedBatch`` rows (PPO's current
rollout) travel as plain dicts (``to_plain`` / ``from_plain``).

A file that cannot be loaded that way is refused (``UnsafeCheckpointError``) without running
anything in it; a file that is damaged (truncated, not a checkpoint) is reported as
``CorruptCheckpointError`` so that resume can fall back to an older checkpoint. A write that
fails because the disk is full says so (``CheckpointWriteError``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastalign.packing import PackedBatch

# Tests set this to a function of the point's name (e.g. one that SIGKILLs the process) to
# interrupt a checkpoint write at each of its steps; ``None`` in every normal run.
fault_hook: Callable[[str], None] | None = None

# Below this much free space, a failed write is reported as a full disk (torch's zip writer
# loses the errno: it raises "[enforce fail at inline_container.cc] ... file write failed").
_FULL_DISK_BYTES = 64 * 2**20
_PACKED_KEY = "__fastalign_packed_batch__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A file that ``torch.load(weights_only=True)`` refuses: it would need to run code."""


class CorruptCheckpointError(CheckpointError):
    """A damaged file (truncated, empty, not a torch file)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (typically: no space left on device)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


def fault_point(name: str) -> None:
    """Let a test interrupt a checkpoint write at the point ``name`` (no-op otherwise)."""
    if fault_hook is not None:
        fault_hook(name)


def load_file(path: Path) -> Any:
    """The content of the checkpoint file ``path``, loaded with ``weights_only=True``.

    Raises ``UnsafeCheckpointError`` when the file holds anything but tensors and plain data
    (nothing in it runs), ``CorruptCheckpointError`` when it is missing or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            reason = _unsafe_reason(str(error))
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is not a plain-data checkpoint ({reason}); loading it could run "
                "code, so nothing in it was run. It was written by an older fastalign or altered by someone: "
                "delete it (or start over with --overwrite)") from None
        raise CorruptCheckpointError(f"{path} is damaged: {error}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptCheckpointError(f"{path} is damaged ({type(error).__name__}: {first_line})") from None


def _unsafe_reason(message: str) -> str:
    """The line of torch's long refusal that names what the file wanted to call."""
    for line in message.splitlines():
        if "Unsupported" in line or "global" in line.lower():
            return line.strip().rstrip(".")[:200]
    return "it holds Python objects other than tensors and plain data"


def save_file(content: Any, path: Path) -> None:
    """``torch.save`` + fsync of ``path``; a full disk raises ``CheckpointWriteError``."""
    path = Path(path)
    try:
        torch.save(content, path)
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise CheckpointWriteError(errno.ENOSPC, f"no space left on device while writing {path}") from error
        raise
    except RuntimeError as error:
        if "inline_container" not in str(error) and "write failed" not in str(error):
            raise
        free = _free_bytes(path.parent)
        if free is not None and free < _FULL_DISK_BYTES:
            raise CheckpointWriteError(errno.ENOSPC, f"no space left on device while writing {path} "
                                       f"({free // 2**20} MiB free)") from error
        reason = str(error).strip().splitlines()[0]
        raise CheckpointWriteError(errno.EIO, f"writing {path} failed ({reason})") from error


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def fsync_dir(directory: Path) -> None:
    """Persist a rename inside ``directory`` (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# -- plain-data forms of what the trainers hold -------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors, numbers and strings."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": _python_rng_to_plain(random.getstate()),
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo ``rng_state``."""
    random.setstate(_python_rng_from_plain(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_rng_from_plain(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(value) for value in state["internal"].tolist()), state["gauss"]


def to_plain(value: Any) -> Any:
    """``value`` with every ``PackedBatch`` (nested in dicts, lists, tuples) as a plain dict."""
    if isinstance(value, PackedBatch):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return {_PACKED_KEY: fields}
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    return value


def from_plain(value: Any) -> Any:
    """Undo ``to_plain``."""
    if isinstance(value, dict):
        if set(value) == {_PACKED_KEY}:
            return PackedBatch(**value[_PACKED_KEY])
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(item) for item in value)
    return value
