"""``PackedBatch``: one packed row of preference (or completion) examples, as tensors.

A row is ``[1, T]`` tokens with no padding: several examples back to back. Rows from
``pack_preference_examples`` each fit the token budget; ``PackedBatch.cat`` joins rows into one
longer row (varlen attention does not care about row boundaries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

PROMPT, CHOSEN, REJECTED = 0, 1, 2
MODES = ("shared", "unshared", "completion")


@dataclass
class PackedBatch:
    """Tensors of one packed row (``T`` tokens, ``M`` scored answer tokens, ``E`` examples).

    Attributes:
        input_ids: int64 ``[1, T]``.
        position_ids: int64 ``[1, T]``; in shared mode ``R`` continues from ``len(P)``.
        example_ids: int64 ``[T]`` local example (``0..E-1``) of each token.
        group_ids: int64 ``[T]`` attention group: tokens of different groups never attend to each
            other (one group per example when the prompt is shared, one per sequence otherwise).
        segment_ids: int8 ``[T]`` 0 prompt, 1 chosen, 2 rejected. Inside a group a token attends
            to earlier-positioned tokens of the prompt and of its own segment.
        cu_seqlens_q: int32 ``[S + 1]`` query sequences for varlen attention (``[P C]`` and
            ``[R]`` per example when shared), in token order.
        cu_seqlens_k: int32 ``[S + 1]`` their key sequences (``[P C]`` and ``[P R]``).
        kv_index: int64 ``[cu_seqlens_k[-1]]`` rows gathered into the key/value sequences.
        max_seqlen_q, max_seqlen_k: longest query / key sequence.
        label_index: int64 ``[M]`` hidden row predicting each scored token; repeats allowed
            (the last prompt row predicts both ``C[0]`` and ``R[0]``).
        targets: int64 ``[M]`` the predicted tokens.
        label_example: int64 ``[M]`` local example of each scored token.
        label_segment: int8 ``[M]`` 1 chosen, 2 rejected.
        example_index: int64 ``[E]`` index of each local example in the packer's input lists.
        prompt_lengths, chosen_lengths, rejected_lengths: int64 ``[E]`` after truncation
            (``rejected_lengths`` is 0 in completion mode).
        mode: ``"shared"``, ``"unshared"`` or ``"completion"``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    example_ids: torch.Tensor
    group_ids: torch.Tensor
    segment_ids: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    kv_index: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    label_index: torch.Tensor
    targets: torch.Tensor
    label_example: torch.Tensor
    label_segment: torch.Tensor
    example_index: torch.Tensor
    prompt_lengths: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    mode: str = "shared"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must be [1, T], got {tuple(self.input_ids.shape)}")
        tokens = self.input_ids.shape[1]
        for name in ("example_ids", "group_ids", "segment_ids"):
            if getattr(self, name).shape != (tokens,):
                raise ValueError(f"{name} must be [T={tokens}], got {tuple(getattr(self, name).shape)}")
        if self.position_ids.shape != self.input_ids.shape:
            raise ValueError("position_ids must have the shape of input_ids")
        labels = self.label_index.shape
        for name in ("targets", "label_example", "label_segment"):
            if getattr(self, name).shape != labels:
                raise ValueError(f"{name} must have the shape of label_index {tuple(labels)}")

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_examples(self) -> int:
        return self.example_index.shape[0]

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def _map(self, fn) -> PackedBatch:
        changes = {
            field.name: fn(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        """A copy with every tensor in pinned host memory (for ``non_blocking`` copies)."""
        return self._map(lambda t: t.pin_memory())

    @staticmethod
    def cat(batches: Sequence[PackedBatch]) -> PackedBatch:
        """Join rows into one row; indices are shifted, examples renumbered in order."""
        if not batches:
            raise ValueError("batches must hold at least one PackedBatch")
        modes = {batch.mode for batch in batches}
        if len(modes) != 1:
            raise ValueError(f"batches mix modes {sorted(modes)}")
        token_shift = example_shift = group_shift = 0
        parts: dict[str, list[torch.Tensor]] = {}

        def add(name: str, tensor: torch.Tensor) -> None:
            parts.setdefault(name, []).append(tensor)

        for batch in batches:
            add("input_ids", batch.input_ids)
            add("position_ids", batch.position_ids)
            add("example_ids", batch.example_ids + example_shift)
            add("group_ids", batch.group_ids + group_shift)
            add("segment_ids", batch.segment_ids)
            add("kv_index", batch.kv_index + token_shift)
            add("seq_q", batch.cu_seqlens_q.diff())
            add("seq_k", batch.cu_seqlens_k.diff())
            add("label_index", batch.label_index + token_shift)
            add("targets", batch.targets)
            add("label_example", batch.label_example + example_shift)
            add("label_segment", batch.label_segment)
            for name in ("example_index", "prompt_lengths", "chosen_lengths", "rejected_lengths"):
                add(name, getattr(batch, name))
            token_shift += batch.num_tokens
            example_shift += batch.num_examples
            group_shift += int(batch.group_ids.max()) + 1 if batch.num_tokens else 0
        joined = {name: torch.cat(tensors, dim=-1) for name, tensors in parts.items()}
        seq_q, seq_k = joined.pop("seq_q"), joined.pop("seq_k")
        return PackedBatch(
            **joined,
            cu_seqlens_q=cumulative_lengths(seq_q),
            cu_seqlens_k=cumulative_lengths(seq_k),
            max_seqlen_q=max(batch.max_seqlen_q for batch in batches),
            max_seqlen_k=max(batch.max_seqlen_k for batch in batches),
            mode=batches[0].mode,
        )


def cumulative_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """int32 ``[S + 1]`` offsets ``(0, l0, l0 + l1, ...)`` of sequence lengths ``[S]``."""
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
