"""``fastalign.linear_cross_entropy``: cross-entropy of ``e @ c^T`` without the logits.

Positional order matches Cut Cross-Entropy 25.1's ``linear_cross_entropy(e, c, targets,
ignore_index, softcap, reduction, shift, filter_eps, impl)`` so swapping the import works.
Differences, on purpose: ``filter_eps`` defaults to ``None`` (exact gradients; CCE filters by
default), and ``bias``, ``label_smoothing``, ``z_loss`` and ``deterministic`` are extra keywords.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastalign.ops.linear_logprobs import linear_logprob_stats
from fastalign.ops.validation import require_tensor

REDUCTIONS = ("mean", "sum", "none")
# Cut Cross-Entropy's impl names, mapped onto fastalign's.
_IMPL_ALIASES = {"cce": "triton", "torch_compile": "torch"}


def _resolve_filter_eps(filter_eps: float | str | None, dtype: torch.dtype) -> float | None:
    """CCE's convention: ``"auto"``/``"high"`` mean ``eps(dtype) / 32``; ``None`` is exact."""
    if filter_eps is None:
        return None
    if isinstance(filter_eps, str):
        if filter_eps not in ("auto", "high"):
            raise ValueError(f"filter_eps must be None, a float or 'auto'/'high', got {filter_eps!r}")
        return torch.finfo(dtype).eps / 32
    if isinstance(filter_eps, bool) or not isinstance(filter_eps, (int, float)) or not filter_eps > 0:
        raise ValueError(f"filter_eps must be None, a float > 0 or 'auto'/'high', got {filter_eps!r}")
    return float(filter_eps)


def _shift_amount(shift: bool | int, e: Tensor) -> int:
    if isinstance(shift, bool):
        amount = int(shift)
    elif isinstance(shift, int) and shift >= 0:
        amount = shift
    else:
        raise ValueError(f"shift must be a bool or an int >= 0, got {shift!r}")
    if amount and e.dim() < 2:
        raise ValueError(f"shift needs e of shape [..., T, H], got {tuple(e.shape)}")
    if amount and amount > e.shape[-2]:
        raise ValueError(f"shift={amount} is larger than the sequence length {e.shape[-2]}")
    return amount


def linear_cross_entropy(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
    shift: bool | int = False,
    filter_eps: float | str | None = None,
    impl: str = "auto",
    *,
    bias: Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    deterministic: bool = False,
) -> Tensor:
    """Token cross-entropy ``-log softmax(cap(e c^T + bias))[target]`` with fused kernels.

    Args:
        e: ``[..., T, H]`` (or ``[N, H]``) hidden states, fp32/fp16/bf16 (float64: torch impl).
        c: ``[V, H]`` classifier (LM-head) weight.
        targets: ``[..., T]`` integer ids, ``ignore_index`` where unscored.
        ignore_index: unscored target value.
        softcap: optional final-logit soft-cap.
        reduction: ``"mean"`` over scored tokens (0 if none), ``"sum"``, or ``"none"``.
        shift: ``True``/``k``: position ``i`` is scored against target ``i + k``
            (``e[..., :-k, :]`` vs ``targets[..., k:]``, read in place, no copy).
        filter_eps: ``None`` = exact; a float or ``"auto"`` skips backward vocab tiles whose
            probabilities are all below it (Triton path only; approximate).
        impl: ``"auto"``, ``"triton"``, ``"torch"`` (CCE's ``"cce"``/``"torch_compile"`` accepted).
        bias: optional ``[V]`` classifier bias.
        label_smoothing: ``eps`` in ``[0, 1)``: ``(1 - eps) * nll + eps * mean_j(-log p_j)``,
            as ``torch.nn.functional.cross_entropy``.
        z_loss: coefficient of ``lse^2`` added per scored token (PaLM's z-loss).
        deterministic: backward without atomics.

    Returns:
        fp32 scalar (``mean``/``sum``), or per-token losses shaped like the (shifted) targets
        with zeros where ignored (``none``).
    """
    require_tensor("e", e)
    require_tensor("c", c)
    require_tensor("targets", targets)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)) or not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    if not isinstance(impl, str):
        raise ValueError(f"impl must be a string, got {impl!r}")
    impl = _IMPL_ALIASES.get(impl, impl)
    amount = _shift_amount(shift, e)
    if amount:
        if tuple(targets.shape) != tuple(e.shape[:-1]):
            raise ValueError(
                f"targets shape {tuple(targets.shape)} must equal e.shape[:-1] {tuple(e.shape[:-1])}"
            )
        e = e[..., : e.shape[-2] - amount, :]
        targets = targets[..., amount:]
    stats = linear_logprob_stats(
        e, c, targets,
        bias=bias, ignore_index=ignore_index, softcap=softcap,
        with_logit_sum=label_smoothing > 0, deterministic=deterministic,
        filter_eps=_resolve_filter_eps(filter_eps, e.dtype), impl=impl,
    )
    # Every term below is already 0 at ignored positions (the op zeroes its outputs there).
    loss = -stats.logprobs
    if label_smoothing > 0:
        smooth = stats.lse - stats.logit_sum / c.shape[0]
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss > 0:
        loss = loss + z_loss * stats.lse.square()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    scored = (targets != ignore_index).sum().clamp(min=1)
    return loss.sum() / scored
