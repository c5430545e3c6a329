"""The non-finite guard of the training loop.

A step whose loss, gradient norm or model outputs are NaN / inf must not reach the optimizer:
one such update turns every parameter into NaN, and the run would go on training (and saving)
garbage. The loop skips the optimizer step of such a step and asks ``NonFiniteGuard`` what to do:
with ``on_nonfinite="stop"`` (the default) training stops at once; with ``"skip"`` it goes on
and stops only after ``max_nonfinite_skips`` consecutive skipped steps. Stopping raises
``NonFiniteError`` naming the step and the quantity; nothing non-finite is ever written
(``first_nonfinite`` checks the parameters before every checkpoint and export).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from fastalign.choices import ON_NONFINITE  # torch-free, for the CLI's help


class NonFiniteError(RuntimeError):
    """Training stopped because of non-finite values (the message names the step and quantity)."""


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """Whether every given tensor holds only finite values (``None`` entries are ignored)."""
    return all(tensor is None or bool(torch.isfinite(tensor.detach()).all()) for tensor in tensors)


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN / inf, or ``None``. Sharded
    tensors (FSDP2's ``DTensor``) are checked on this rank's shard."""
    for name, tensor in named:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.is_floating_point() and not bool(torch.isfinite(local.detach()).all()):
            return name
    return None


class NonFiniteGuard:
    """Counts consecutive skipped steps and decides when to stop."""

    def __init__(self, policy: str, max_skips: int) -> None:
        if policy not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {policy!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_nonfinite_skips must be an int >= 1, got {max_skips!r}")
        self.policy, self.max_skips = policy, max_skips
        self.consecutive = 0
        self.total = 0

    def finite_step(self) -> None:
        self.consecutive = 0

    def skipped_step(self, step: int, quantity: str) -> str:
        """Record a skipped step; returns the line to log, or raises ``NonFiniteError`` when the
        run must stop."""
        self.consecutive += 1
        self.total += 1
        what = f"step {step}: non-finite {quantity}; the optimizer step was skipped"
        if self.policy == "stop":
            raise NonFiniteError(f"training diverged at {what} and training stopped (on_nonfinite='stop'; "
                                 "lower learning_rate, or set on_nonfinite=skip to skip such steps)")
        if self.consecutive >= self.max_skips:
            raise NonFiniteError(f"training diverged at {what}: {self.consecutive} consecutive steps were "
                                 f"non-finite (max_nonfinite_skips={self.max_skips}), training stopped")
        return f"{what} ({self.consecutive} in a row; stopping after {self.max_skips})"


def describe(value: float) -> str:
    """``nan`` / ``inf`` / ``-inf`` for messages."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
