"""Padding a packed row to a multiple of a token count (sequence parallelism splits a row into
equal slices).

The padding tokens form an attention group of their own at the end of the row: no real
token attends to them, they are never labelled, and they belong to no example, so every
per-example result and gradient is exactly that of the unpadded row.
"""

from __future__ import annotations

import dataclasses

import torch

from fastalign.packing.batch import PROMPT, PackedBatch, cumulative_lengths

PAD_EXAMPLE = -1  # example_ids of padding tokens: no example


def pad_to_multiple(batch: PackedBatch, multiple: int) -> PackedBatch:
    """``batch`` with ``(-T) mod multiple`` padding tokens appended (``batch`` itself when
    ``T`` already divides).

    Args:
        batch: one packed row of ``T`` tokens.
        multiple: int ``>= 1``.

    Returns:
        A ``PackedBatch`` of ``ceil(T / multiple) * multiple`` tokens: padding ids 0, positions
        ``0..k-1``, ``example_ids`` -1, segment "prompt", a new attention group and one more
        varlen sequence; labels, targets and per-example fields unchanged.
    """
    if not isinstance(batch, PackedBatch):
        raise TypeError(f"batch must be a PackedBatch, got {type(batch).__name__}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    tokens = batch.num_tokens
    count = -tokens % multiple
    if count == 0:
        return batch

    def extend(tensor: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tail.to(device=tensor.device, dtype=tensor.dtype)], dim=-1)

    device = batch.device
    offsets = torch.arange(count, device=device)
    group = int(batch.group_ids.max()) + 1 if tokens else 0
    lengths = torch.tensor([count], device=device)
    return dataclasses.replace(
        batch,
        input_ids=extend(batch.input_ids, torch.zeros(1, count, dtype=torch.long)),
        position_ids=extend(batch.position_ids, offsets[None]),
        example_ids=extend(batch.example_ids, torch.full((count,), PAD_EXAMPLE)),
        group_ids=extend(batch.group_ids, torch.full((count,), group)),
        segment_ids=extend(batch.segment_ids, torch.full((count,), PROMPT)),
        cu_seqlens_q=cumulative_lengths(torch.cat([batch.cu_seqlens_q.diff(), lengths.to(batch.cu_seqlens_q)])),
        cu_seqlens_k=cumulative_lengths(torch.cat([batch.cu_seqlens_k.diff(), lengths.to(batch.cu_seqlens_k)])),
        kv_index=extend(batch.kv_index, tokens + offsets),
        max_seqlen_q=max(batch.max_seqlen_q, count),
        max_seqlen_k=max(batch.max_seqlen_k, count),
    )
