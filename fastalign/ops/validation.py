"""Argument checks shared by the public ops; every failure is a ``ValueError`` naming the argument."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_positive_finite(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_linear_head_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    temperature: float,
    softcap: float | None,
    names: tuple[str, str, str, str] = ("hidden", "weight", "targets", "bias"),
) -> None:
    """Static checks (shapes, dtypes, devices, scalars) of a fused linear-head call.

    The range check of target values needs the data and runs inside the op (see
    ``check_target_range``), so that this function stays traceable by ``torch.compile``.
    """
    h_name, w_name, t_name, b_name = names
    require_tensor(h_name, hidden)
    require_tensor(w_name, weight)
    require_tensor(t_name, targets)
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{h_name} must be floating point {FLOAT_DTYPES}, got {hidden.dtype}")
    if hidden.dim() < 1:
        raise ValueError(f"{h_name} must have shape [..., H], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{w_name} must have shape [V, H], got {tuple(weight.shape)}")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"{w_name} must have V > 0 and H > 0, got {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{h_name}'s last dimension ({hidden.shape[-1]}) must equal {w_name}.shape[1] "
            f"({weight.shape[1]})"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(
            f"{w_name} dtype {weight.dtype} differs from {h_name} dtype {hidden.dtype} "
            "(cast one of them, or call under torch.autocast)"
        )
    if weight.device != hidden.device:
        raise ValueError(f"{w_name} is on {weight.device} but {h_name} is on {hidden.device}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"{t_name} must be an integer tensor, got {targets.dtype}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{t_name} shape {tuple(targets.shape)} must equal {h_name}.shape[:-1] "
            f"{tuple(hidden.shape[:-1])}"
        )
    if targets.device != hidden.device:
        raise ValueError(f"{t_name} is on {targets.device} but {h_name} is on {hidden.device}")
    if bias is not None:
        require_tensor(b_name, bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{b_name} must have shape [V]=({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"{b_name} dtype {bias.dtype} differs from {h_name} dtype {hidden.dtype}")
        if bias.device != hidden.device:
            raise ValueError(f"{b_name} is on {bias.device} but {h_name} is on {hidden.device}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    require_positive_finite("temperature", temperature)
    require_positive_finite("softcap", softcap, allow_none=True)


def check_target_range(targets: torch.Tensor, vocab_size: int, ignore_index: int, name: str = "targets") -> None:
    """Reject a target outside ``[0, V)`` that is not ``ignore_index``.

    On CPU: a ``ValueError`` naming the first bad value (one reduction). On CUDA: a
    device-side assertion (``torch._assert_async``) so that the hot path never waits for the
    GPU; a bad target then stops the process with this message at the next synchronization.
    """
    if targets.numel() == 0 or targets.device.type == "meta":
        return
    scored = targets != ignore_index
    bad = scored & ((targets < 0) | (targets >= vocab_size))
    if targets.is_cuda:
        torch._assert_async(
            ~bad.any(), f"{name} holds a value outside [0, {vocab_size}) that is not ignore_index={ignore_index}"
        )
        return
    if bool(bad.any()):
        first = targets[bad][0].item()
        raise ValueError(
            f"{name} holds {first}, outside [0, {vocab_size}) and not ignore_index={ignore_index}"
        )
