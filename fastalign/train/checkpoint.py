"""Atomic, resumable checkpoints: model, optimizer, scheduler, RNG and data position.

Layout: ``OUTPUT_DIR/checkpoints/step-XXXXXXXX/`` (``state.pt`` for a single process; see
``checkpoint_sharded.py`` for distributed runs). A checkpoint is written into a temporary
``.step-…`` directory and renamed into place only when complete. Re-saving a step that exists
renames the old copy to ``.old-step-…`` first and deletes it only once the new one is in place,
so at every instant one complete copy of the step is on disk; ``recover`` (run before resuming)
puts a stranded ``.old-step-…`` back and removes the stale temporaries a killed run leaves.
Only the newest ``keep_last`` checkpoints are kept; rotation works only inside a real
``checkpoints/`` directory and never follows a symbolic link.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fastalign.train.checkpoint_io import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    fault_point,
    fsync_dir,
    load_file,
    restore_rng,
    rng_state,
    save_file,
)
from fastalign.train.lifecycle import notice

__all__ = ["CheckpointError", "CheckpointWriteError", "checkpoint_dir", "install", "list_checkpoints",
           "load_latest_checkpoint", "recover", "restore_rng", "rng_state", "rotate", "save_checkpoint"]

_NAME = re.compile(r"^step-(\d{8})$")
TEMP_PREFIX = ".step-"  # being written, or being deleted: removed by ``recover``
OLD_PREFIX = ".old-step-"  # the previous copy of a step being re-saved
CORRUPT_PREFIX = "corrupt-"  # a damaged checkpoint moved aside for inspection
STATE_FILE = "state.pt"
SHARDED_MARKER = "trainer.pt"  # written last by a distributed run (see checkpoint_sharded.py)


def checkpoint_dir(output_dir: str | Path) -> Path:
    """``output_dir/checkpoints``; refused when it is a symbolic link (rotation deletes in it)."""
    root = Path(output_dir) / "checkpoints"
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link (to {os.readlink(root)}): checkpoints are written and "
                              "rotated only in a real directory inside the output directory")
    return root


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_sharded(path: Path) -> bool:
    return (path / SHARDED_MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (single-process or sharded), oldest first; temporary directories
    and symbolic links are ignored."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if _NAME.match(path.name) and not path.is_symlink()
             and ((path / STATE_FILE).is_file() or is_sharded(path))]
    return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))


def recover(output_dir: str | Path) -> list[str]:
    """Repair what a killed run left in ``checkpoints/``: a step whose only copy is the
    ``.old-step-…`` of an interrupted re-save is renamed back, and temporary directories are
    removed. Returns what was done (for the log)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    done = []
    for path in sorted(root.iterdir()):
        if path.is_symlink() or not path.is_dir() or not path.name.startswith(OLD_PREFIX):
            continue
        name = f"step-{path.name[len(OLD_PREFIX):][:8]}"
        final = root / name
        if _NAME.match(name) and not final.exists():
            os.replace(path, final)
            done.append(f"restored {final.name} from an interrupted re-save")
        else:
            shutil.rmtree(path)
            done.append(f"removed {path.name} (left by an interrupted re-save)")
    for path in sorted(root.iterdir()):
        if path.name.startswith(TEMP_PREFIX) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            done.append(f"removed the temporary {path.name} of an interrupted checkpoint")
    if done:
        fsync_dir(root)
    return done


def new_partial(root: Path, step: int) -> Path:
    """A fresh temporary directory for checkpoint ``step``."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{step:08d}-", dir=root))


def install(partial: Path, final: Path) -> None:
    """Make the complete checkpoint ``partial`` the one named ``final``. An existing ``final``
    is renamed away first and deleted only after the new one is in place, so a kill at any
    point leaves one complete copy (``recover`` renames a stranded old copy back)."""
    old = None
    if final.exists():
        old = final.with_name(f"{OLD_PREFIX}{final.name[len('step-'):]}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        fault_point("old-moved-away")
    os.replace(partial, final)
    fsync_dir(final.parent)
    fault_point("new-renamed-in")
    if old is not None:
        _delete(old)


def _delete(path: Path) -> None:
    """Remove a checkpoint directory: first renamed to a temporary name (atomic), so that a
    kill halfway through the deletion leaves nothing that looks like a checkpoint."""
    doomed = path.with_name(f"{TEMP_PREFIX}deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    fault_point("renamed-for-deletion")
    shutil.rmtree(doomed, ignore_errors=True)


def rotate(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never through a symbolic link)."""
    for old in list_checkpoints(output_dir)[:-keep_last]:
        _delete(old)
    fault_point("rotated")


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any], *, keep_last: int) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts only) as checkpoint ``step``.

    A full disk raises ``CheckpointWriteError`` naming the file and the checkpoint that stays
    valid; the partial write is removed.
    """
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    partial = new_partial(root, step)
    try:
        fault_point("temp-created")
        save_file(state, partial / STATE_FILE)
        fault_point("state-written")
        install(partial, final)
    except CheckpointWriteError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointWriteError(error.errno, f"{error.strerror}; {intact_message(output_dir)}") from error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    rotate(output_dir, keep_last)
    return final


def intact_message(output_dir: str | Path) -> str:
    """Which checkpoint a failed write left valid (for error messages)."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return "no earlier checkpoint exists"
    return f"the newest complete checkpoint, {checkpoints[-1]}, is intact"


def move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``corrupt-step-…`` (kept for inspection, never loaded)."""
    target = path.with_name(f"{CORRUPT_PREFIX}{path.name}")
    if target.exists():
        target = path.with_name(f"{CORRUPT_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, target)
    return target


def load_latest_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """``(path, state)`` of the newest readable single-process checkpoint, or ``None``.

    A damaged newest checkpoint is reported, moved aside (``corrupt-step-…``) and the next
    older one is tried. A file that would run code when loaded raises ``UnsafeCheckpointError``.
    """
    recover(output_dir)
    for path in reversed(list_checkpoints(output_dir)):
        if is_sharded(path):
            marker = load_file(path / SHARDED_MARKER)  # plain data only: nothing in it runs
            world = marker.get("world_size") if isinstance(marker, dict) else "?"
            raise CheckpointError(f"{path} was written by a distributed run of {world} processes: resume it under "
                                  f"torchrun with --nproc-per-node {world} (same strategy)")
        try:
            state = load_file(path / STATE_FILE)
        except CorruptCheckpointError as error:
            moved = move_aside(path)
            notice(f"checkpoint {path.name} is unreadable ({error}); moved it to {moved.name}, trying an older one")
            continue
        if not isinstance(state, dict) or "step" not in state:
            moved = move_aside(path)
            notice(f"checkpoint {path.name} holds no trainer state; moved it to {moved.name}, trying an older one")
            continue
        return path, state
    return None
