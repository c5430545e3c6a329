"""Public packers: token lists in, budget-sized ``PackedBatch`` rows out.

The work (truncation, first-fit-decreasing row assignment, layout) runs in the C++ extension
when it is built and in its pure-Python twin otherwise; both give identical arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastalign._extension import native_extension
from fastalign.packing._checks import INT64_RANGE, above_int64, check_bool, check_int
from fastalign.packing.batch import PackedBatch, cumulative_lengths
from fastalign.packing.layout_python import (
    DROPPED,
    MODES,
    OVERFLOW,
    TRUNCATED,
    pack_layout_python,
)

logger = logging.getLogger("fastalign")
BACKENDS = ("auto", "cpp", "python")
TokenLists = Sequence[Sequence[int]]


@dataclass(frozen=True)
class PackingStats:
    """What the packer did: counts over the input examples and the rows it produced."""

    examples: int
    kept: int
    truncated: int
    dropped: int
    rows: int
    tokens: int
    token_budget: int
    dropped_examples: tuple[int, ...]

    @property
    def fill(self) -> float:
        """Fraction of ``rows x token_budget`` holding real tokens (1.0 = no padding needed)."""
        return self.tokens / (self.rows * self.token_budget) if self.rows else 0.0


class PackedRows(list):
    """``list[PackedBatch]`` that also carries the ``PackingStats`` of the call."""

    stats: PackingStats


def _flatten(name: str, lists: TokenLists | None, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    if lists is None:
        return np.zeros(0, np.int64), np.zeros((count or 0) + 1, np.int64)
    if isinstance(lists, (str, bytes)) or not isinstance(lists, Sequence):
        raise ValueError(f"{name} must be a list of token-id lists, got {type(lists).__name__}")
    if count is not None and len(lists) != count:
        raise ValueError(f"{name} has {len(lists)} examples but prompt_ids has {count}")
    lengths = np.zeros(len(lists) + 1, np.int64)
    arrays = []
    for i, tokens in enumerate(lists):
        array = np.asarray(tokens)
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name}[{i}] must be a flat list of ints, got {str(tokens)[:60]}")
        if (too_big := above_int64(array)) is not None:
            raise ValueError(f"{name}[{i}] holds token id {too_big[1]}, above {INT64_RANGE}")
        arrays.append(array.astype(np.int64, copy=False))
        lengths[i + 1] = array.size
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return flat, np.cumsum(lengths)


def _optional_limit(name: str, value: int | None) -> int:
    limit = check_int(name, value, low=1, optional=True)
    return -1 if limit is None else limit  # the layout's "no limit"


def _pack(
    prompt_ids: TokenLists,
    chosen_ids: TokenLists,
    rejected_ids: TokenLists | None,
    *,
    mode: str,
    token_budget: int,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    on_overflow: str,
    vocab_size: int | None,
    backend: str,
    sort_by_length: bool = True,
) -> PackedRows:
    # Every argument is checked here, before either backend sees it, so both agree on it.
    token_budget = check_int("token_budget", token_budget)
    sort_by_length = check_bool("sort_by_length", sort_by_length)
    if on_overflow not in OVERFLOW:
        raise ValueError(f"on_overflow must be one of {tuple(OVERFLOW)}, got {on_overflow!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    prompt = _flatten("prompt_ids", prompt_ids, None)
    count = len(prompt[1]) - 1
    chosen_name = "completion_ids" if mode == "completion" else "chosen_ids"
    chosen = _flatten(chosen_name, chosen_ids, count)
    rejected = _flatten("rejected_ids", rejected_ids, count)
    arguments = (
        *prompt, *chosen, *rejected, token_budget,
        _optional_limit("max_prompt_length", max_prompt_length),
        _optional_limit("max_completion_length", max_completion_length),
        OVERFLOW[on_overflow], MODES[mode], _optional_limit("vocab_size", vocab_size), sort_by_length,
    )
    native = native_extension() if backend != "python" else None
    if backend == "cpp" and native is None:
        raise ValueError("backend='cpp' but the C++ extension fastalign._C is not built")
    layout = native.pack_layout(*arguments) if native is not None else pack_layout_python(*arguments)
    return _rows_from_layout(layout, mode, token_budget)


def _rows_from_layout(layout: dict[str, np.ndarray], mode: str, token_budget: int) -> PackedRows:
    rows = PackedRows()
    status = layout["status"]
    offsets = {key: layout[key] for key in layout if key.startswith("row_")}
    for row in range(len(offsets["row_token_offsets"]) - 1):

        def part(key: str, offset_key: str) -> torch.Tensor:
            lo, hi = offsets[offset_key][row], offsets[offset_key][row + 1]
            return torch.from_numpy(np.ascontiguousarray(layout[key][lo:hi]))

        seq_q = part("seq_lens_q", "row_seq_offsets")
        seq_k = part("seq_lens_k", "row_seq_offsets")
        rows.append(
            PackedBatch(
                input_ids=part("input_ids", "row_token_offsets")[None],
                position_ids=part("position_ids", "row_token_offsets")[None],
                example_ids=part("example_ids", "row_token_offsets"),
                group_ids=part("group_ids", "row_token_offsets"),
                segment_ids=part("segment_ids", "row_token_offsets"),
                cu_seqlens_q=cumulative_lengths(seq_q),
                cu_seqlens_k=cumulative_lengths(seq_k),
                kv_index=part("kv_index", "row_kv_offsets"),
                max_seqlen_q=int(seq_q.max()),
                max_seqlen_k=int(seq_k.max()),
                label_index=part("label_index", "row_label_offsets"),
                targets=part("targets", "row_label_offsets"),
                label_example=part("label_example", "row_label_offsets"),
                label_segment=part("label_segment", "row_label_offsets"),
                example_index=part("kept", "row_example_offsets"),
                prompt_lengths=part("prompt_len", "row_example_offsets"),
                chosen_lengths=part("chosen_len", "row_example_offsets"),
                rejected_lengths=part("rejected_len", "row_example_offsets"),
                mode=mode,
            )
        )
    rows.stats = PackingStats(
        examples=len(status),
        kept=int((status != DROPPED).sum()),
        truncated=int((status == TRUNCATED).sum()),
        dropped=int((status == DROPPED).sum()),
        rows=len(rows),
        tokens=int(offsets["row_token_offsets"][-1]) if len(offsets["row_token_offsets"]) else 0,
        token_budget=token_budget,
        dropped_examples=tuple(int(i) for i in np.flatnonzero(status == DROPPED)),
    )
    if rows.stats.dropped or rows.stats.truncated:
        logger.info(
            "packing: %d of %d examples truncated, %d dropped (over token_budget=%d)",
            rows.stats.truncated, rows.stats.examples, rows.stats.dropped, token_budget,
        )
    return rows


def pack_preference_examples(
    prompt_ids: TokenLists,
    chosen_ids: TokenLists,
    rejected_ids: TokenLists,
    *,
    token_budget: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    on_overflow: str = "error",
    share_prompt: bool = True,
    vocab_size: int | None = None,
    backend: str = "auto",
    sort_by_length: bool = True,
) -> PackedRows:
    """Pack preference examples into rows of at most ``token_budget`` tokens.

    Args:
        prompt_ids, chosen_ids, rejected_ids: one token-id list per example (non-empty; ids
            ``>= 0`` and ``< vocab_size`` when given).
        token_budget: tokens per row; an example takes ``P + C + R`` tokens (``2P + C + R``
            when ``share_prompt=False``).
        max_prompt_length: keep only the last this-many prompt tokens.
        max_completion_length: keep only the first this-many tokens of each answer.
        on_overflow: an example still over the budget: ``"error"`` (``ValueError`` naming it),
            ``"drop"`` (skipped, counted in ``.stats``), or ``"truncate"`` (prompt cut from its
            start, then both answers capped, until it fits).
        share_prompt: ``[P C R]`` with the prompt encoded once (default), or ``[P C][P R]``.
        backend: ``"auto"`` (C++ when built), ``"cpp"`` or ``"python"`` — identical output.
        sort_by_length: first-fit-decreasing (fewest rows; each row then holds examples of
            similar size). ``False``: first-fit in input order — shuffle the input first and
            rows mix lengths, which trains much better than length-sorted rows.

    Returns:
        ``PackedRows``: a list of ``PackedBatch`` (one per row, examples inside a row in input
        order) with ``.stats`` (``PackingStats``).
    """
    return _pack(
        prompt_ids, chosen_ids, rejected_ids,
        mode="shared" if check_bool("share_prompt", share_prompt) else "unshared",
        token_budget=token_budget, max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length, on_overflow=on_overflow,
        vocab_size=vocab_size, backend=backend, sort_by_length=sort_by_length,
    )


def pack_completion_examples(
    prompt_ids: TokenLists,
    completion_ids: TokenLists,
    *,
    token_budget: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    on_overflow: str = "error",
    vocab_size: int | None = None,
    backend: str = "auto",
    sort_by_length: bool = True,
) -> PackedRows:
    """Pack ``[P C]`` sequences (SFT, reward scoring, rollouts); completions are labelled as
    "chosen". Arguments as in ``pack_preference_examples``."""
    return _pack(
        prompt_ids, completion_ids, None, mode="completion",
        token_budget=token_budget, max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length, on_overflow=on_overflow,
        vocab_size=vocab_size, backend=backend, sort_by_length=sort_by_length,
    )
