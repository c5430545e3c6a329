"""What an attention backend needs to know about a packed row, built once per forward.

The rule (docs/architecture.md, step 3 of a DPO step): query ``q`` may attend to key ``k`` iff
both are in the same attention group, ``pos[k] <= pos[q]``, ``k`` is a prompt token or in
``q``'s own segment (so a rejected token never sees a chosen one), and — with a sliding window
``w`` — ``pos[q] - pos[k] < w``. Windows are measured in position space, which is what the
model saw in training: R continues at ``len(P)`` no matter how long C is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastalign.attention.ulysses import SequenceParallelGroup
from fastalign.packing.batch import PROMPT, PackedBatch


@dataclass
class PackedAttention:
    """Per-token tensors of one packed row plus caches shared by all layers of one forward.

    ``group_ids``, ``segment_ids``, ``positions``: ``[T]``; ``cu_seqlens_q/k`` int32 ``[S+1]``,
    ``kv_index`` int64 ``[K]`` for varlen kernels. ``calls`` counts attention-layer invocations
    so the caller can prove every layer went through a packed-aware backend.

    ``sequence_parallel``: the group sharing the row when it is split over ranks (Ulysses);
    the layers then see only ``local_tokens`` of the ``num_tokens`` (all tensors here describe
    the whole row, which attention sees after its all-to-all).
    """

    group_ids: torch.Tensor
    segment_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    kv_index: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    sequence_parallel: SequenceParallelGroup | None = None
    calls: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_batch(cls, batch: PackedBatch, sequence_parallel: SequenceParallelGroup | None = None) -> PackedAttention:
        """Metadata of ``batch`` (its length must divide by the group size under sequence parallelism)."""
        if sequence_parallel is not None and batch.num_tokens % sequence_parallel.size:
            raise ValueError(f"a row of {batch.num_tokens} tokens cannot be split over {sequence_parallel.size} "
                             "ranks; pad it with fastalign.packing.pad_to_multiple first")
        return cls(
            group_ids=batch.group_ids,
            segment_ids=batch.segment_ids,
            positions=batch.position_ids[0],
            cu_seqlens_q=batch.cu_seqlens_q,
            cu_seqlens_k=batch.cu_seqlens_k,
            kv_index=batch.kv_index,
            max_seqlen_q=batch.max_seqlen_q,
            max_seqlen_k=batch.max_seqlen_k,
            sequence_parallel=sequence_parallel,
        )

    @property
    def num_tokens(self) -> int:
        return self.group_ids.shape[0]

    @property
    def local_tokens(self) -> int:
        """Tokens each layer call sees: the row, or this rank's slice of it."""
        return self.num_tokens // (self.sequence_parallel.size if self.sequence_parallel else 1)

    def allowed(self, q: torch.Tensor, k: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
        """Elementwise rule on index tensors ``q``, ``k`` (broadcastable); bool result."""
        pos_q, pos_k = self.positions[q], self.positions[k]
        seg_q, seg_k = self.segment_ids[q], self.segment_ids[k]
        keep = (self.group_ids[q] == self.group_ids[k]) & (pos_k <= pos_q)
        keep = keep & ((seg_k == PROMPT) | (seg_k == seg_q))
        if sliding_window is not None:
            keep = keep & (pos_q - pos_k < sliding_window)
        return keep

    def dense_mask(self, sliding_window: int | None) -> torch.Tensor:
        """bool ``[T, T]`` (True = attend), cached per window. O(T²): CPU and tests only."""
        key = ("dense", sliding_window)
        if key not in self._cache:
            index = torch.arange(self.num_tokens, device=self.group_ids.device)
            self._cache[key] = self.allowed(index[:, None], index[None, :], sliding_window)
        return self._cache[key]

    def groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention groups as a padded table: ``index [G, L]`` token of each slot (0 in padding)
        and ``valid [G, L]``. Groups are contiguous runs of tokens, so attention can run per
        group: O(Σ group²) instead of O(T²) for rows packed with many short examples."""

        def build():
            tokens = self.num_tokens
            starts_here = torch.ones(tokens, dtype=torch.bool, device=self.group_ids.device)
            starts_here[1:] = self.group_ids[1:] != self.group_ids[:-1]
            starts = torch.nonzero(starts_here).flatten()
            lengths = torch.diff(starts, append=starts.new_tensor([tokens]))
            offsets = torch.arange(int(lengths.max()), device=starts.device)
            valid = offsets[None, :] < lengths[:, None]
            index = torch.where(valid, starts[:, None] + offsets[None, :], 0)
            return index, valid

        return self.cached(("groups",), build)

    def group_mask(self, sliding_window: int | None) -> torch.Tensor:
        """bool ``[G, L, L]``: the rule inside each group; padding slots see only themselves
        (never a fully masked softmax row), and no real token sees a padding slot."""

        def build():
            index, valid = self.groups()
            keep = self.allowed(index[:, :, None], index[:, None, :], sliding_window)
            keep = keep & valid[:, :, None] & valid[:, None, :]
            eye = torch.eye(index.shape[1], dtype=torch.bool, device=index.device)
            return keep | (eye & ~valid[:, :, None])

        return self.cached(("group_mask", sliding_window), build)

    def cached(self, key: tuple, build):
        """Memoize a backend-specific object (block masks) for the layers of this forward."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
