"""Reducing per-token losses to a scalar the way RL trainers do, with global normalization.

Under gradient accumulation or data parallelism the right denominator is the token (or
sequence) count of the whole optimizer step, not of the micro-batch: pass it as
``num_tokens`` / ``num_sequences`` so the result does not depend on how the step was split.
"""

from __future__ import annotations

import torch

from fastalign.choices import AGGREGATIONS  # torch-free, for the CLI's help
from fastalign.losses._checks import check_choice, normalizer


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Scalar from ``per_token [B, T]`` over positions where ``mask [B, T]`` is set.

    - ``token_mean``: ``Σ x m / num_tokens`` (default ``Σ m``) — DAPO / BNPO.
    - ``seq_mean_token_sum``: ``Σ_b Σ_t x m / num_sequences`` (default ``B``).
    - ``seq_mean_token_mean``: ``Σ_b (Σ_t x m / Σ_t m) / num_sequences`` — original GRPO.
    - ``seq_mean_token_sum_norm``: ``Σ x m / (num_sequences · max_tokens)`` — Dr. GRPO's
      constant normalizer (``max_tokens`` defaults to ``T``).
    Empty selections give 0, never NaN.
    """
    check_choice("mode", mode, AGGREGATIONS)
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(f"per_token and mask must both be [B, T]; got {tuple(per_token.shape)} and {tuple(mask.shape)}")
    weights = mask.to(per_token.dtype)
    masked = per_token * weights
    batch = per_token.new_tensor(float(max(per_token.shape[0], 1)))
    if mode == "token_mean":
        return masked.sum() / normalizer("num_tokens", num_tokens, weights.sum().clamp(min=1.0))
    sequences = normalizer("num_sequences", num_sequences, batch)
    if mode == "seq_mean_token_sum":
        return masked.sum() / sequences
    if mode == "seq_mean_token_sum_norm":
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        length = per_token.shape[1] if max_tokens is None else max_tokens
        if length < 1:
            raise ValueError(f"max_tokens must be >= 1 (per_token has no columns), got {max_tokens!r}")
        return masked.sum() / (sequences * length)
    per_sequence = masked.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return per_sequence.sum() / sequences
