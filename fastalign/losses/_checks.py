"""Validation helpers of the loss functions (``ValueError`` naming the argument)."""

from __future__ import annotations

import math
import numbers
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
    if present:
        # One device sync for all of them, not one per tensor.
        finite = torch.stack([torch.isfinite(value.detach()).all() for value in present.values()])
        if not bool(finite.all()):
            bad = next(name for name, ok in zip(present, finite.tolist()) if not ok)
            raise ValueError(f"{bad} holds non-finite values")


def check_lengths(name: str, lengths: torch.Tensor | None, batch: int, needed_for: str | None) -> None:
    if lengths is None:
        if needed_for is not None:
            raise ValueError(f"{name} is required for {needed_for}")
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != batch:
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"{name} must be a 1-d tensor of {batch} token counts, got {shape}")
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"{name} must hold token counts (an integer or float tensor), got {lengths.dtype}")
    valid = lengths >= 0  # False for NaN too
    if lengths.is_floating_point():
        valid = valid & torch.isfinite(lengths)
    if not bool(valid.all()):
        index = int((~valid).nonzero()[0])
        raise ValueError(f"{name} must hold finite token counts >= 0; {name}[{index}] is {lengths[index].item()!r}")


def check_number(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number (not a bool, a tensor or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_weights(name: str, weights: object, count: int) -> list[float]:
    """``count`` finite numbers >= 0 (a list or tuple), as floats."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"{name} must be a list of {count} numbers, got {type(weights).__name__}")
    if len(weights) != count:
        raise ValueError(f"{name} has {len(weights)} entries for {count} loss types")
    checked = [check_number(f"{name}[{i}]", weight) for i, weight in enumerate(weights)]
    for i, weight in enumerate(checked):
        if weight < 0:
            raise ValueError(f"{name}[{i}] must be >= 0, got {weights[i]!r}")
    return checked


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
    """The denominator of a mean: ``count`` (global, for accumulation / data parallel) or ``default``.

    ``count`` must be finite and > 0, as a number or a one-element tensor. Checking a tensor's
    value costs one device sync; without it a count of 0 (or below) became a 1e-12 denominator,
    i.e. a loss of ~1e12, and NaN a NaN loss.
    """
    if count is None:
        return default
    if isinstance(count, torch.Tensor):
        if count.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(count.shape)}")
        if count.dtype == torch.bool or count.is_complex():
            raise ValueError(f"{name} must be a real count, got dtype {count.dtype}")
        value = count.detach().reshape(())
        if not bool(torch.isfinite(value) & (value > 0)):
            raise ValueError(f"{name} must be finite and > 0, got {value.item()!r}")
        return count.to(default.dtype).reshape(())
    if isinstance(count, bool) or not isinstance(count, numbers.Real) or not math.isfinite(count) or not count > 0:
        raise ValueError(f"{name} must be finite and > 0, got {count!r}")
    return default.new_tensor(float(count))
