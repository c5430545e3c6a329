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
from fastalign.packing.layout_python import DROPPED, MODES, OVERFLOW, TRUNCATED, pack_layout_python

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
    long_rows: int = 0  # rows of one example longer than token_budget (up to max_length)
    long_row_tokens: int = 0

    @property
    def fill(self) -> float:
        """Fraction of the rows' room holding real tokens (1.0 = no padding needed); a long row's
        room is its own length."""
        room = (self.rows - self.long_rows) * self.token_budget + self.long_row_tokens
        return self.tokens / room if room else 0.0


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
    max_length: int | None = None,
) -> PackedRows:
    # Every argument is checked here, before either backend sees it, so both agree on it.
    token_budget = check_int("token_budget", token_budget)
    max_length = check_int("max_length", max_length, low=1, optional=True)
    if max_length is not None and max_length < token_budget:
        raise ValueError(f"max_length must be >= token_budget ({token_budget}), got {max_length}; to cap pairs "
                         "below the row size use max_prompt_length / max_completion_length")
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
    limits = (_optional_limit("max_prompt_length", max_prompt_length),
              _optional_limit("max_completion_length", max_completion_length))
    native = native_extension() if backend != "python" else None
    if backend == "cpp" and native is None:
        raise ValueError("backend='cpp' but the C++ extension fastalign._C is not built")
    layout_fn = native.pack_layout if native is not None else pack_layout_python

    def layout(parts, budget: int) -> dict[str, np.ndarray]:
        return layout_fn(*parts[0], *parts[1], *parts[2], budget, *limits, OVERFLOW[on_overflow], MODES[mode],
                         _optional_limit("vocab_size", vocab_size), sort_by_length)

    parts = (prompt, chosen, rejected)
    if max_length is None or max_length == token_budget:
        return _rows_from_layout(layout(parts, token_budget), mode, token_budget)
    return _pack_with_long_rows(parts, layout, mode, token_budget, max_length, sort_by_length)


def _subset(flat: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The token lists ``indices`` of a flattened ragged array, flattened again."""
    lengths = np.diff(offsets)[indices]
    pieces = [flat[offsets[i]:offsets[i + 1]] for i in indices]
    joined = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    return joined, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _pack_with_long_rows(parts, layout, mode: str, token_budget: int, max_length: int,
                         sort_by_length: bool) -> PackedRows:
    """Examples over ``token_budget`` (after truncation) but within ``max_length`` each get a row
    of their own; ``on_overflow`` applies at ``max_length``; the rest pack into budget rows."""
    # One pass over everything at max_length: checks every token (errors name the input index),
    # applies max_prompt_length / max_completion_length and the overflow policy.
    first = layout(parts, max_length)
    sizes = first["prompt_len"] * (2 if mode == "unshared" else 1) + first["chosen_len"] + first["rejected_len"]
    long_inputs = first["kept"][sizes > token_budget]
    short_inputs = np.setdiff1d(first["kept"], long_inputs)
    groups = [(short_inputs, token_budget)] + [(np.array([i]), max_length) for i in long_inputs]
    rows, first_input = PackedRows(), []
    for indices, budget in groups:
        if not indices.size:
            continue
        sub = tuple(_subset(flat, offsets, indices) for flat, offsets in parts)
        for row in _rows_from_layout(layout(sub, budget), mode, budget, quiet=True):
            row.example_index = torch.from_numpy(indices)[row.example_index]
            rows.append(row)
            first_input.append(int(row.example_index.min()))
    # First-fit-decreasing opens the longest rows first; first-fit in input order opens each
    # row at its earliest example: keep those orders with the long rows among the others.
    if sort_by_length:  # long rows first, longest first (ties: input order), then the budget rows as packed
        order = sorted(range(len(rows)), key=lambda r: (-rows[r].num_tokens, first_input[r])
                       if rows[r].num_tokens > token_budget else (0, r))
    else:
        order = sorted(range(len(rows)), key=lambda r: first_input[r])
    packed = PackedRows(rows[r] for r in order)
    status = first["status"]
    long_rows = [row.num_tokens for row in packed if row.num_tokens > token_budget]
    packed.stats = PackingStats(
        examples=len(status), kept=int((status != DROPPED).sum()), truncated=int((status == TRUNCATED).sum()),
        dropped=int((status == DROPPED).sum()), rows=len(packed), tokens=sum(row.num_tokens for row in packed),
        token_budget=token_budget, dropped_examples=tuple(int(i) for i in np.flatnonzero(status == DROPPED)),
        long_rows=len(long_rows), long_row_tokens=sum(long_rows),
    )
    _report(packed.stats, f"max_length={max_length}")
    return packed


def _report(stats: PackingStats, limit: str) -> None:
    """Drops are a warning (never silent); truncations are logged."""
    if stats.dropped:
        shown = ", ".join(map(str, stats.dropped_examples[:10])) + (", ..." if stats.dropped > 10 else "")
        logger.warning("packing: %d of %d examples dropped (over %s): examples %s", stats.dropped, stats.examples,
                       limit, shown)
    if stats.truncated:
        logger.info("packing: %d of %d examples truncated (over %s or the length limits)", stats.truncated,
                    stats.examples, limit)


def _rows_from_layout(layout: dict[str, np.ndarray], mode: str, token_budget: int, *,
                      quiet: bool = False) -> PackedRows:
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
    if not quiet:
        _report(rows.stats, f"token_budget={token_budget}")
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
    max_length: int | None = None,
) -> PackedRows:
    """Pack preference examples into rows of at most ``token_budget`` tokens.

    Args:
        prompt_ids, chosen_ids, rejected_ids: one token-id list per example (non-empty; ids
            ``>= 0`` and ``< vocab_size`` when given).
        token_budget: tokens per row; an example takes ``P + C + R`` tokens (``2P + C + R``
            when ``share_prompt=False``).
        max_prompt_length: keep only the last this-many prompt tokens.
        max_completion_length: keep only the first this-many tokens of each answer.
        on_overflow: an example still over the budget (``max_length`` when given):
            ``"error"`` (``ValueError`` naming it), ``"drop"`` (skipped, counted in ``.stats``
            and logged as a warning), or ``"truncate"`` (prompt cut from its start, then both
            answers capped, until it fits).
        share_prompt: ``[P C R]`` with the prompt encoded once (default), or ``[P C][P R]``.
        backend: ``"auto"`` (C++ when built), ``"cpp"`` or ``"python"`` — identical output.
        sort_by_length: first-fit-decreasing (fewest rows; each row then holds examples of
            similar size). ``False``: first-fit in input order — shuffle the input first and
            rows mix lengths, which trains much better than length-sorted rows.
        max_length: longest example (``P + C + R`` tokens after the length limits), ``>=
            token_budget``. An example longer than ``token_budget`` but within ``max_length``
            gets a row of its own (long-context pairs: one row per pair, split further by
            sequence parallelism if needed); ``on_overflow`` applies above ``max_length``.
            ``None``: ``token_budget``.

    Returns:
        ``PackedRows``: a list of ``PackedBatch`` (one per row, examples inside a row in input
        order) with ``.stats`` (``PackingStats``).
    """
    return _pack(
        prompt_ids, chosen_ids, rejected_ids,
        mode="shared" if check_bool("share_prompt", share_prompt) else "unshared",
        token_budget=token_budget, max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length, on_overflow=on_overflow,
        vocab_size=vocab_size, backend=backend, sort_by_length=sort_by_length, max_length=max_length,
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
    max_length: int | None = None,
) -> PackedRows:
    """Pack ``[P C]`` sequences (SFT, reward scoring, rollouts); completions are labelled as
    "chosen". Arguments as in ``pack_preference_examples``."""
    return _pack(
        prompt_ids, completion_ids, None, mode="completion",
        token_budget=token_budget, max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length, on_overflow=on_overflow,
        vocab_size=vocab_size, backend=backend, sort_by_length=sort_by_length, max_length=max_length,
    )
