"""A run's life cycle around the training loop: whose output directory it is, and stopping
cleanly on SIGINT / SIGTERM.

An output directory that holds another run (its ``metrics.jsonl``, ``checkpoints/`` or
``final/``) is refused unless the caller resumes it or overwrites it: training into it would mix
two runs' metrics and checkpoints, and a later resume would pick the wrong one. ``overwrite``
removes the old run's files (and only those) before the new run writes anything.

On SIGINT (Ctrl-C) or SIGTERM the loop finishes its current step, writes a checkpoint and raises
``TrainingInterrupted``; the CLI turns that into exit status 130 / 143 with one line on stderr.
A second signal while that happens interrupts at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from pathlib import Path

RUN_FILES = ("metrics.jsonl", "checkpoints", "final")


class RunDirectoryError(ValueError):
    """The output directory holds another run and neither resume nor overwrite was asked for."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint} written" if checkpoint is not None else "no step was completed"
        super().__init__(f"interrupted by {name} after step {step}: {where}; continue with --resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def notice(message: str, *, main: bool = True) -> None:
    """One line for the user on stderr (only from rank 0 when ``main`` says so)."""
    if main:
        print(f"fastalign: {message}", file=sys.stderr, flush=True)


def run_files(output_dir: str | Path) -> list[str]:
    """The names of another run's files present in ``output_dir`` (empty when unused)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for name in RUN_FILES:
        path = root / name
        if path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse (``RunDirectoryError``, nothing changed) an output directory that holds another
    run, unless ``resume`` or ``overwrite``; ``resume`` and ``overwrite`` together are refused.
    Reads only: safe to call on every rank before anything is written."""
    if not isinstance(resume, bool) or not isinstance(overwrite, bool):
        raise TypeError(f"resume and overwrite must be bools, got {resume!r} and {overwrite!r}")
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise RunDirectoryError(f"output_dir {root} exists and is not a directory")
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other: resume continues the run in "
                                f"{root}, overwrite deletes it")
    found = run_files(root)
    if resume and found and not _has_checkpoint_entries(root):
        raise RunDirectoryError(f"--resume: nothing to resume in {root} (no checkpoint), but it holds "
                                f"{', '.join(found)} of an earlier run: pass --overwrite instead to delete them and "
                                "start over")
    if resume or overwrite:
        return
    if found:
        raise RunDirectoryError(f"{root} holds another run ({', '.join(found)}): pass --resume to continue it or "
                                "--overwrite to delete it and start over (Python: train(resume=True) or "
                                "train(overwrite=True))")


def _has_checkpoint_entries(root: Path) -> bool:
    """Whether ``root/checkpoints`` holds anything that may be a checkpoint (``step-*``, or the
    ``.old-step-*`` copy of an interrupted re-save), readable or not."""
    checkpoints = root / "checkpoints"
    if not checkpoints.is_dir() or checkpoints.is_symlink():
        return False
    return any(path.name.startswith(("step-", ".old-step-")) for path in checkpoints.iterdir())


def remove_run(output_dir: str | Path) -> list[str]:
    """Delete another run's files from ``output_dir`` (checkpoints first); other files stay.
    A symbolic link is removed itself, never followed."""
    root = Path(output_dir)
    removed = []
    for name in RUN_FILES:
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed


class StopSignals:
    """Within ``with StopSignals():``, SIGINT and SIGTERM only set ``received`` (the loop checks
    it between steps); a second signal raises ``KeyboardInterrupt`` at once. Handlers can only
    be installed from the main thread: elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
