"""Per-token log-probs → per-sequence sums, token counts and means, for padded or packed input.

Packed rows carry many sequences back to back; a segment id per token (or cu_seqlens) says
which. Reductions use ``index_add`` — no Python loop over sequences.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class SequenceLogps(NamedTuple):
    sums: torch.Tensor  # [S] summed log-probs of the scored tokens
    counts: torch.Tensor  # [S] number of scored tokens (int64)
    means: torch.Tensor  # [S] sums / counts (0 for sequences without scored tokens)


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """``cu_seqlens [S + 1]`` (0, ends...) → segment id per token ``[cu_seqlens[-1]]``."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be a 1-d tensor [num_sequences + 1]")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if bool((lengths < 0).any()) or int(cu_seqlens[0]) != 0:
        raise ValueError("cu_seqlens must start at 0 and be non-decreasing")
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)
    if total is not None and ids.numel() != total:
        raise ValueError(f"cu_seqlens covers {ids.numel()} tokens but the input has {total}")
    return ids


def sequence_logps(
    token_logps: torch.Tensor,
    *,
    segment_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    num_sequences: int | None = None,
) -> SequenceLogps:
    """Reduce ``token_logps`` per sequence.

    Args:
        token_logps: ``[B, T]`` padded (one sequence per row) or ``[N]`` / ``[1, N]`` packed.
        segment_ids: ``[N]`` (or the shape of ``token_logps``) sequence index per token; negative
            ids are not counted (padding, prompt tokens).
        cu_seqlens: alternative to ``segment_ids`` for packed input.
        mask: which tokens are scored (default: all with a valid segment).
        num_sequences: number of sequences (default ``max(segment_ids) + 1``; giving it avoids a
            device sync).
    """
    if segment_ids is not None and cu_seqlens is not None:
        raise ValueError("give segment_ids or cu_seqlens, not both")
    if segment_ids is None and cu_seqlens is None:
        if token_logps.dim() != 2:
            raise ValueError("padded input must be [B, T]; packed input needs segment_ids or cu_seqlens")
        rows = torch.arange(token_logps.shape[0], device=token_logps.device)
        segment_ids = rows[:, None].expand_as(token_logps)
        num_sequences = token_logps.shape[0] if num_sequences is None else num_sequences
    elif cu_seqlens is not None:
        segment_ids = segment_ids_from_cu_seqlens(cu_seqlens, token_logps.numel())
        num_sequences = cu_seqlens.numel() - 1 if num_sequences is None else num_sequences
    flat = token_logps.reshape(-1)
    ids = segment_ids.reshape(-1)
    if ids.numel() != flat.numel():
        raise ValueError(f"segment_ids has {ids.numel()} entries for {flat.numel()} tokens")
    scored = ids >= 0
    if mask is not None:
        if mask.numel() != flat.numel():
            raise ValueError(f"mask has {mask.numel()} entries for {flat.numel()} tokens")
        scored = scored & mask.reshape(-1).bool()
    if num_sequences is None:
        num_sequences = int(ids.max().item()) + 1 if ids.numel() else 0
    safe_ids = torch.where(scored, ids, torch.zeros_like(ids))
    weights = scored.to(flat.dtype)
    sums = flat.new_zeros(num_sequences).index_add(0, safe_ids, flat * weights)
    counts = torch.zeros(num_sequences, dtype=torch.int64, device=flat.device).index_add(
        0, safe_ids, scored.to(torch.int64)
    )
    means = sums / counts.clamp(min=1).to(sums.dtype)
    return SequenceLogps(sums, counts, means)


def pad_by_sequence(values: torch.Tensor, sequence_ids: torch.Tensor, num_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-token ``values [M]`` whose ``sequence_ids [M]`` are non-decreasing runs (packed
    label order) → ``padded [S, L]`` (0 in padding) and ``mask [S, L]`` bool, ``L`` = the longest
    run. Differentiable w.r.t. ``values``; the layout the RL losses take."""
    if values.dim() != 1 or sequence_ids.shape != values.shape:
        raise ValueError("values and sequence_ids must both be 1-d of the same length")
    counts = torch.zeros(num_sequences, dtype=torch.int64, device=values.device).index_add(
        0, sequence_ids, torch.ones_like(sequence_ids)
    )
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(values.numel(), device=values.device) - starts[sequence_ids]
    width = int(counts.max()) if num_sequences else 0
    padded = values.new_zeros(num_sequences, width).index_put((sequence_ids, position), values)
    mask = torch.zeros(num_sequences, width, dtype=torch.bool, device=values.device)
    mask[sequence_ids, position] = True
    return padded, mask
