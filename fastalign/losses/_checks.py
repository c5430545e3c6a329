"""Validation helpers of the loss functions (``ValueError`` naming the argument)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_logps(**tensors: torch.Tensor | None) -> None:
    """Same 1-d shape, floating point, finite, same device, for every non-None tensor."""
    present = {k: v for k, v in tensors.items() if v is not None}
    shape = device = None
    first = None
    for name, value in present.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {value.dtype}")
        if value.dim() != 1:
            raise ValueError(f"{name} must be 1-d [batch], got shape {tuple(value.shape)}")
        if shape is None:
            shape, device, first = value.shape, value.device, name
        elif value.shape != shape:
            raise ValueError(f"{name} has {value.shape[0]} entries but {first} has {shape[0]} (batch sizes differ)")
        elif value.device != device:
            raise ValueError(f"{name} is on {value.device} but {first} is on {device}")
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"{name} holds non-finite values")


def check_lengths(name: str, lengths: torch.Tensor | None, batch: int, needed_for: str | None) -> None:
    if lengths is None:
        if needed_for is not None:
            raise ValueError(f"{name} is required for {needed_for}")
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != batch:
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"{name} must be a 1-d tensor of {batch} token counts, got {shape}")
    if bool((lengths < 0).any()):
        raise ValueError(f"{name} must be >= 0")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_range(name: str, value: float, low: float, high: float, *, low_open=False, high_open=True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def normalizer(name: str, count: int | float | torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    """The denominator of a mean: ``count`` (global, for accumulation / data parallel) or ``default``."""
    if count is None:
        return default
    if isinstance(count, torch.Tensor):
        if count.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(count.shape)}")
        return count.to(default.dtype).clamp(min=1e-12)
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not count > 0:
        raise ValueError(f"{name} must be > 0, got {count!r}")
    return default.new_tensor(float(count))
