"""The policy's side of sequence parallelism: which label rows this rank scores, and the sum
of per-token results over the group.

Under Ulysses sequence parallelism (``fastalign.attention.ulysses``) each rank of the group
holds the final hidden states of its own contiguous slice of the row, so it scores exactly the
labels whose predicting row lies in that slice. The per-token log-probs of all ranks are then
summed over the group (every label is scored on exactly one rank, zero elsewhere), so every
rank holds the whole row's ``[M]`` log-probs and computes the same per-example sums and loss.

Gradient of that sum: each rank's loss is the same function of the same summed values, so a
rank's own contribution receives the loss's gradient directly (identity backward, no
collective). The parameter gradients of the ranks are then partial sums of the full gradient;
the trainer adds them up over the group (DDP over all ranks with the loss scaled by the world
size, see ``fastalign.train.distributed``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fastalign.attention.ulysses import SequenceParallelGroup
from fastalign.packing.batch import PackedBatch


class _SumOverGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, group: SequenceParallelGroup) -> torch.Tensor:
        total = values.clone()
        dist.all_reduce(total, group=group.group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_group(values: torch.Tensor, group: SequenceParallelGroup) -> torch.Tensor:
    """``values`` summed over the ranks of ``group`` (same shape and dtype on every rank);
    the backward passes each rank's gradient through unchanged (see the module docstring)."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a tensor, got {type(values).__name__}")
    if not isinstance(group, SequenceParallelGroup):
        raise TypeError(f"group must be a SequenceParallelGroup, got {type(group).__name__}")
    return values if group.size == 1 else _SumOverGroup.apply(values, group)


def local_labels(batch: PackedBatch, group: SequenceParallelGroup, local_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels this rank scores: ``(positions [m], rows [m])`` int64 — indices into
    ``batch.label_index`` / ``targets`` whose predicting row is in this rank's slice
    ``[rank * local_tokens, (rank + 1) * local_tokens)``, and those rows relative to the slice."""
    start = group.rank * local_tokens
    mine = (batch.label_index >= start) & (batch.label_index < start + local_tokens)
    positions = torch.nonzero(mine).flatten()
    return positions, batch.label_index.index_select(0, positions) - start
