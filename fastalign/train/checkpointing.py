"""The trainer's side of checkpoints and of a run's start: what a checkpoint holds, writing it
(never with a non-finite parameter), resuming from the newest readable one, and taking over the
output directory (refusing another run's, ``overwrite``, repairing a killed run's leftovers).

A mixin of ``Trainer`` (``train/base.py``), kept apart so that the loop file holds the loop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch import nn

from fastalign.train import distributed
from fastalign.train.checkpoint import checkpoint_dir, load_latest_checkpoint, recover, save_checkpoint
from fastalign.train.checkpoint_io import from_plain, restore_rng, rng_state, to_plain
from fastalign.train.lifecycle import RunDirectoryError, check_output_dir, notice, remove_run, run_files
from fastalign.train.nonfinite import NonFiniteError, first_nonfinite


class Checkpointing:
    """Checkpoint and run-directory methods of ``Trainer`` (see there for the attributes)."""

    # -- what a checkpoint holds ----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A single-process checkpoint's content: tensors and plain data only."""
        return {"model": self.checkpoint_module().state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(), "local": to_plain(self.rank_state()), **self.trainer_state()}

    def rank_state(self) -> dict[str, Any]:
        """What this rank alone holds between steps and a resume must restore (PPO: the current
        rollout). Tensors are stored on the CPU."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        """Restore ``rank_state()`` (called after the model and optimizer are loaded)."""

    def checkpoint_module(self) -> nn.Module:
        """The module whose parameters the optimizer holds, with parameter names matching its
        state-dict keys (what ``torch.distributed.checkpoint`` maps optimizer state by)."""
        return self.policy.model

    def trainer_state(self) -> dict[str, Any]:
        """Everything but model, optimizer and RNG (those are sharded per rank when distributed)."""
        return {"scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                "position": self.position, "config": self.config.to_dict(), "history": self.history}

    # -- writing and reading --------------------------------------------------------------
    def check_finite_parameters(self, what: str) -> None:
        """Raise ``NonFiniteError`` on every rank when a parameter holds NaN / inf, so that
        ``what`` (a checkpoint, the final model) is never written with one."""
        name = first_nonfinite(self.checkpoint_module().named_parameters())
        (bad,) = self.global_sum(float(name is not None))
        if bad:
            raise NonFiniteError(f"parameter {name or '(on another rank)'} is non-finite at step {self.step}: "
                                 f"the {what} was not written")

    def save_checkpoint(self) -> Path:
        """Write checkpoint ``step`` (collective when distributed); returns its path."""
        self.check_finite_parameters("checkpoint")
        if self.dist.enabled:
            from fastalign.train.checkpoint_sharded import save_sharded_checkpoint

            path = save_sharded_checkpoint(self.output_dir, self.step, self.checkpoint_module(), self.optimizer,
                                           self.trainer_state(), self.dist, keep_last=self.config.keep_last,
                                           rank_state=self.rank_state())
        else:
            path = save_checkpoint(self.output_dir, self.step, self.state(), keep_last=self.config.keep_last)
        self._saved_step, self._saved_path, self._saved_at = self.step, path, time.monotonic()
        return path

    def resume(self) -> bool:
        """Load the newest readable checkpoint under ``output_dir``; ``False`` if none.

        A damaged newest checkpoint is reported and moved aside and the next older one is used; a
        file that would run code when loaded is refused (``UnsafeCheckpointError``)."""
        if self.dist.enabled:
            from fastalign.train.checkpoint_sharded import latest_sharded_checkpoint, load_sharded_checkpoint

            path = latest_sharded_checkpoint(self.output_dir, self.dist)
            if path is None:
                return False
            state = load_sharded_checkpoint(path, self.checkpoint_module(), self.optimizer, self.dist)
        else:
            found = load_latest_checkpoint(self.output_dir)
            if found is None:
                return False
            path, state = found
            self.checkpoint_module().load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            state["local"] = from_plain(state.get("local", {}))
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.history = list(state["history"])
        self.load_rank_state(state.get("local", {}))
        # The schedule is a function of this run's config: a resumed run with a larger
        # max_steps continues on its own curve, not on the stored learning rate of the old one.
        multiplier = self.lr_multiplier(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._rewrite_metrics()
        # That checkpoint exists: the end of a finished run need not write it again.
        self._saved_step, self._saved_path = self.step, path
        notice(f"resuming from step {self.step} of {self.config.max_steps} ({path})", main=self.dist.is_main)
        return True

    # -- the output directory -------------------------------------------------------------
    def start_run(self, *, resume: bool, overwrite: bool) -> None:
        """Take over ``output_dir`` before the first step (collective): refuse another run's
        directory unless ``resume`` / ``overwrite``; ``overwrite`` deletes the old run's files
        first; leftovers of a killed run are repaired; ``resume`` loads the newest checkpoint or
        says that there is none."""
        check_output_dir(self.output_dir, resume=resume, overwrite=overwrite)  # every rank, reads only
        checkpoint_dir(self.output_dir)  # refuses a symlinked checkpoints/ before any work
        distributed.barrier(self.dist)
        if self.dist.is_main:
            if overwrite and run_files(self.output_dir):
                removed = remove_run(self.output_dir)
                notice(f"--overwrite: deleted {', '.join(removed)} of the previous run in {self.output_dir}")
            for line in recover(self.output_dir):
                notice(f"{self.output_dir}: {line}")
        distributed.barrier(self.dist)
        self._saved_step, self._saved_path, self._saved_at = None, None, time.monotonic()
        if resume and self.resume():
            return
        if resume:
            leftovers = run_files(self.output_dir)
            if leftovers:
                raise RunDirectoryError(f"--resume: no readable checkpoint in {self.output_dir}, but it holds "
                                        f"{', '.join(leftovers)} of an earlier run: pass --overwrite instead to "
                                        "delete them and start over")
            notice(f"--resume: nothing to resume in {self.output_dir} (no checkpoint): starting a new run",
                   main=self.dist.is_main)
        self._rewrite_metrics()

    def _rewrite_metrics(self) -> None:
        """``metrics.jsonl`` = this run's history (after a resume, the interrupted run's metrics
        after the checkpoint are dropped)."""
        if not self.dist.is_main:
            return
        path = self.output_dir / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.history))
        tmp.replace(path)

    def _log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
