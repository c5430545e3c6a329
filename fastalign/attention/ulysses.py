"""Ulysses sequence parallelism around packed attention (torch.distributed all-to-all).

A packed row of ``T`` tokens is split into ``sp`` contiguous slices, one per rank of a
sequence-parallel group; everything position-wise (embeddings, norms, projections, MLP, the
log-prob head) runs on the rank's own slice. Attention needs every token, so around it one
all-to-all swaps the split: ``[1, H, T/sp, D]`` (all heads, own tokens) becomes
``[1, H/sp, T, D]`` (own heads, all tokens), the packed attention rule runs on the whole row
with the row's full ``PackedAttention`` (shared-prompt mask, sliding windows in position space,
softcap — whatever the backend supports), and a second all-to-all swaps back to
``[1, T/sp, H, D]``. Each all-to-all's backward is the opposite all-to-all.

Requirements: the row length is a multiple of ``sp`` (``fastalign.packing.pad_to_multiple``)
and both the query and the key/value head counts are multiples of ``sp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class SequenceParallelGroup:
    """The ranks that share one packed row: ``rank`` of ``size`` in ``group``.

    ``group=None`` means the default (world) process group.
    """

    group: object | None
    rank: int
    size: int

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be an int >= 1, got {self.size!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.size:
            raise ValueError(f"rank must be an int in [0, {self.size}), got {self.rank!r}")

    @classmethod
    def of(cls, group=None) -> SequenceParallelGroup:
        """This process's place in ``group`` (an initialized ``torch.distributed`` group)."""
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("sequence parallelism needs an initialized torch.distributed process group")
        return cls(group, dist.get_rank(group), dist.get_world_size(group))


def _exchange(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: SequenceParallelGroup) -> torch.Tensor:
    """Chunk ``j`` of ``x`` along ``scatter_dim`` goes to rank ``j``; the chunks received are
    joined along ``gather_dim`` in rank order."""
    send = torch.stack(x.chunk(group.size, dim=scatter_dim)).contiguous()  # [sp, ...] one block per rank
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group.group)
    return torch.cat(received.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int, group: SequenceParallelGroup):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _exchange(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _exchange(grad.contiguous(), gather_dim, scatter_dim, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: SequenceParallelGroup) -> torch.Tensor:
    """Differentiable all-to-all: split ``x`` along ``scatter_dim`` over the group's ranks and
    concatenate what arrives along ``gather_dim`` (rank order). Shapes: ``x.shape[scatter_dim]``
    must divide by ``group.size``; the result has ``shape[scatter_dim] / size`` and
    ``shape[gather_dim] * size``."""
    if not isinstance(group, SequenceParallelGroup):
        raise TypeError(f"group must be a SequenceParallelGroup, got {type(group).__name__}")
    if x.shape[scatter_dim] % group.size:
        raise ValueError(f"dimension {scatter_dim} of size {x.shape[scatter_dim]} does not divide by the "
                         f"sequence-parallel size {group.size}")
    if group.size == 1:
        return x
    return _AllToAll.apply(x, scatter_dim, gather_dim, group)


def heads_to_sequence(states: torch.Tensor, group: SequenceParallelGroup) -> torch.Tensor:
    """``[1, H, T/sp, D]`` (all heads of this rank's tokens) → ``[1, H/sp, T, D]`` (this rank's
    heads, every token). ``H`` must divide by the group size."""
    if states.shape[1] % group.size:
        raise ValueError(f"{states.shape[1]} attention heads cannot be split over sequence_parallel={group.size} "
                         "ranks (query and key/value head counts must both divide by it)")
    return all_to_all(states, 1, 2, group)


def sequence_to_heads(out: torch.Tensor, group: SequenceParallelGroup) -> torch.Tensor:
    """Attention output ``[1, T, H/sp, D]`` → ``[1, T/sp, H, D]`` (this rank's tokens, all heads)."""
    return all_to_all(out, 1, 2, group)
