"""Shared pieces of the fused layers: token log-probs of [B, T, H] hidden states through the
fused op (a ``FusedHead`` of the raw ``weight`` / ``bias`` the layers take: no soft-cap, no
scale), per-sequence sums and lengths, and Liger-compatible metrics (mean logits, chosen NLL)
computed without materializing logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fastalign.ops.head import FusedHead


class SequenceStats(NamedTuple):
    """Log-probs of padded rows ``[R, T]`` (one sequence per row) and their per-row reductions."""

    token_logps: torch.Tensor  # [R, T] fp32, 0 at ignored targets
    sums: torch.Tensor  # [R] summed log-probs of scored tokens
    lengths: torch.Tensor  # [R] scored tokens per row (int64)

    def row_logps(self, average: bool) -> torch.Tensor:
        """``[R]`` fp32: each row's summed log-prob, or its mean per scored token (Liger's
        ``average_log_prob``; a row without scored tokens gives 0).

        Not ``fastalign.losses.sequence_logps``: that one reduces per-token log-probs per
        sequence (packed segments or padded rows); this one only picks sum or mean of rows
        already reduced here."""
        if not average:
            return self.sums
        return self.sums / self.lengths.clamp(min=1).to(self.sums.dtype)


def check_layer_inputs(weight: torch.Tensor, hidden: torch.Tensor, target: torch.Tensor, *, paired: bool,
                       names=("lin_weight", "_input", "target")) -> None:
    w_name, h_name, t_name = names
    for name, value in zip(names, (weight, hidden, target)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if hidden.dim() != 3:
        raise ValueError(f"{h_name} must be [batch, seq_len, hidden], got shape {tuple(hidden.shape)}")
    if paired and hidden.shape[0] % 2:
        raise ValueError(
            f"{h_name} has an odd first dimension ({hidden.shape[0]}): it must stack chosen rows then "
            "rejected rows, [2B, T, H]"
        )
    if tuple(target.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"{t_name} shape {tuple(target.shape)} must equal {h_name}.shape[:2] {tuple(hidden.shape[:2])}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"{w_name} must be [V, {hidden.shape[2]}], got shape {tuple(weight.shape)}")


def sequence_stats(weight, hidden, target, bias, *, ignore_index: int, impl: str,
                   temperature: float = 1.0) -> SequenceStats:
    """One fused call: per-token log-probs ``[R, T]``, their row sums and scored lengths.

    ``weight [V, H]``, ``hidden [R, T, H]``, ``target [R, T]`` (int64, ``ignore_index`` where not
    scored), ``bias [V]`` or None; log-probs are fp32 (float64 for float64 input)."""
    token_logps = FusedHead(weight, bias).logprobs(hidden, target, ignore_index=ignore_index,
                                                   temperature=temperature, impl=impl)
    lengths = (target != ignore_index).sum(dim=1)
    return SequenceStats(token_logps, token_logps.sum(dim=1), lengths)


@torch.no_grad()
def mean_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Mean of the raw logits ``h W^T + b`` over all rows, positions and vocab entries (Liger's
    ``*_logits_mean``), in closed form: ``(Σ_rows h) · (Σ_j W_j) / (R T V) + mean(b)``."""
    rows = hidden.shape[0] * hidden.shape[1]
    total = hidden.float().sum(dim=(0, 1)) @ weight.float().sum(dim=0)
    mean = total / (rows * weight.shape[0])
    if bias is not None:
        mean = mean + bias.float().mean()
    return mean


def token_mean_nll(token_logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``-Σ log p / #scored tokens`` over the given rows (Liger's ``nll_loss``)."""
    return -token_logps.sum() / lengths.sum().clamp(min=1).to(token_logps.dtype)


class FusedLayerBase(nn.Module):
    """Holds the options every fused layer shares."""

    def __init__(self, ignore_index: int, impl: str):
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.impl = impl

    def stats(self, weight, hidden, target, bias, **kw) -> SequenceStats:
        return sequence_stats(weight, hidden, target, bias, ignore_index=self.ignore_index, impl=self.impl, **kw)
