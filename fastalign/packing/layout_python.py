"""Pure-Python twin of ``csrc/packing_layout.cpp``: truncation, row assignment and layout.

Both take flat token arrays with offsets and return the same dict of flat NumPy arrays (see
``LAYOUT_KEYS``); tests assert they are identical. The layout of one example in a row:

- shared prompt (``mode="shared"``): ``[P C R]``; positions ``0..p+c-1`` then ``p..p+r-1``;
  query sequences ``[P C]`` (keys ``[P C]``) and ``[R]`` (keys ``[P R]`` gathered).
- unshared (``mode="unshared"``): ``[P C][P R]``, two independent causal sequences.
- completion (``mode="completion"``, no rejected answers): ``[P C]`` for SFT and rollouts.

Labels: the hidden row that predicts each answer token (an index with repeats in shared mode:
the last prompt row predicts both ``C[0]`` and ``R[0]``), its target, its example and whether
it belongs to the chosen (1) or rejected (2) answer.
"""

from __future__ import annotations

import numpy as np

from fastalign.packing.bin_packing import first_fit_decreasing_python

MODES = {"shared": 0, "unshared": 1, "completion": 2}
OVERFLOW = {"error": 0, "drop": 1, "truncate": 2}
KEPT, TRUNCATED, DROPPED = 0, 1, 2
PROMPT, CHOSEN, REJECTED = 0, 1, 2
# Fewest tokens one example can occupy (one token per part; the prompt twice when unshared).
MIN_BUDGET = {0: 3, 1: 4, 2: 2}

LAYOUT_KEYS = (
    "status", "kept", "prompt_len", "chosen_len", "rejected_len", "row_example_offsets",
    "input_ids", "position_ids", "example_ids", "group_ids", "segment_ids", "row_token_offsets",
    "label_index", "targets", "label_example", "label_segment", "row_label_offsets",
    "seq_lens_q", "seq_lens_k", "row_seq_offsets", "kv_index", "row_kv_offsets",
)


def _part(tokens: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    return tokens[offsets[i] : offsets[i + 1]]


def _validate(name: str, tokens: np.ndarray, offsets: np.ndarray, vocab_size: int) -> None:
    lengths = np.diff(offsets)
    empty = np.flatnonzero(lengths < 1)
    if empty.size:
        raise ValueError(f"{name}[{empty[0]}] is empty; every example needs at least one token")
    low = tokens < 0
    high = tokens >= vocab_size if vocab_size > 0 else np.zeros_like(low)
    bad = np.flatnonzero(low | high)
    if bad.size:
        example = int(np.searchsorted(offsets, bad[0], side="right") - 1)
        bound = f"[0, vocab_size={vocab_size})" if vocab_size > 0 else ">= 0"
        raise ValueError(f"{name}[{example}] holds token id {int(tokens[bad[0]])}, outside {bound}")


def _fit(p: int, c: int, r: int, mode: int, budget: int) -> tuple[int, int, int]:
    """Shorten an example to the budget: prompt from its start first, then the answers."""
    copies = 2 if mode == 1 else 1
    if c + r + copies > budget:
        cap = budget - 1 if mode == 2 else (budget - copies) // 2
        c, r = min(c, cap), min(r, cap)
    return min(p, (budget - c - r) // copies), c, r


def example_sizes(p: np.ndarray, c: np.ndarray, r: np.ndarray, mode: int) -> np.ndarray:
    return (2 * p if mode == 1 else p) + c + r


def pack_layout_python(
    prompt_tokens: np.ndarray,
    prompt_offsets: np.ndarray,
    chosen_tokens: np.ndarray,
    chosen_offsets: np.ndarray,
    rejected_tokens: np.ndarray,
    rejected_offsets: np.ndarray,
    token_budget: int,
    max_prompt_length: int,
    max_completion_length: int,
    overflow: int,
    mode: int,
    vocab_size: int,
    sort_by_length: bool = True,
) -> dict[str, np.ndarray]:
    """Twin of the C++ ``pack_layout``; ``-1`` means "no limit" / "unknown vocab".

    In completion mode ``rejected_offsets`` is all zeros (no rejected answers).
    """
    if token_budget < MIN_BUDGET[mode]:
        raise ValueError(f"token_budget must be >= {MIN_BUDGET[mode]} in this mode, got {token_budget}")
    _validate("prompt_ids", prompt_tokens, prompt_offsets, vocab_size)
    _validate("chosen_ids", chosen_tokens, chosen_offsets, vocab_size)
    if mode != 2:
        _validate("rejected_ids", rejected_tokens, rejected_offsets, vocab_size)

    p = np.diff(prompt_offsets).astype(np.int64)
    c = np.diff(chosen_offsets).astype(np.int64)
    r = np.diff(rejected_offsets).astype(np.int64)
    if max_prompt_length > 0:
        p = np.minimum(p, max_prompt_length)
    if max_completion_length > 0:
        c, r = np.minimum(c, max_completion_length), np.minimum(r, max_completion_length)
    status = np.where(
        (p < np.diff(prompt_offsets)) | (c < np.diff(chosen_offsets)) | (r < np.diff(rejected_offsets)),
        TRUNCATED, KEPT,
    ).astype(np.int8)
    sizes = example_sizes(p, c, r, mode)
    for i in np.flatnonzero(sizes > token_budget):
        if overflow == 0:
            raise ValueError(
                f"example {i} needs {sizes[i]} tokens (prompt {p[i]}, chosen {c[i]}, rejected {r[i]}) "
                f"but token_budget is {token_budget}; raise token_budget, set max_prompt_length / "
                "max_completion_length, or pass on_overflow='drop' or 'truncate'"
            )
        if overflow == 1:
            status[i] = DROPPED
        else:
            p[i], c[i], r[i] = _fit(int(p[i]), int(c[i]), int(r[i]), mode, token_budget)
            status[i] = TRUNCATED
    sizes = example_sizes(p, c, r, mode)

    kept_inputs = np.flatnonzero(status != DROPPED)
    rows = first_fit_decreasing_python(sizes[kept_inputs], token_budget, sort_by_length) if kept_inputs.size else np.zeros(0, np.int64)
    # Examples in row order, and by input index inside a row.
    order = np.lexsort((kept_inputs, rows)) if kept_inputs.size else np.zeros(0, np.int64)
    kept, kept_rows = kept_inputs[order], rows[order]
    num_rows = int(kept_rows.max()) + 1 if kept.size else 0

    out: dict[str, list] = {key: [] for key in LAYOUT_KEYS}
    offsets = {key: [0] for key in ("row_example_offsets", "row_token_offsets", "row_label_offsets",
                                   "row_seq_offsets", "row_kv_offsets")}
    position = 0
    for row in range(num_rows):
        start, local = 0, 0
        while position < kept.size and kept_rows[position] == row:
            i = int(kept[position])
            pi, ci, ri = int(p[i]), int(c[i]), int(r[i])
            prompt = _part(prompt_tokens, prompt_offsets, i)[-pi:]
            chosen = _part(chosen_tokens, chosen_offsets, i)[:ci]
            rejected = _part(rejected_tokens, rejected_offsets, i)[:ri]
            start = _emit_example(out, mode, local, start, prompt, chosen, rejected)
            out["prompt_len"].append(pi)
            out["chosen_len"].append(ci)
            out["rejected_len"].append(ri)
            local += 1
            position += 1
        offsets["row_example_offsets"].append(position)
        offsets["row_token_offsets"].append(len(out["input_ids"]))
        offsets["row_label_offsets"].append(len(out["label_index"]))
        offsets["row_seq_offsets"].append(len(out["seq_lens_q"]))
        offsets["row_kv_offsets"].append(len(out["kv_index"]))

    result = {key: np.asarray(out[key], dtype=np.int64) for key in LAYOUT_KEYS if key not in offsets}
    result.update({key: np.asarray(value, dtype=np.int64) for key, value in offsets.items()})
    result["status"] = status
    result["kept"] = kept.astype(np.int64)
    for key in ("segment_ids", "label_segment"):
        result[key] = result[key].astype(np.int8)
    return result


def _emit_example(out, mode, local, start, prompt, chosen, rejected) -> int:
    """Append one example's tokens, labels and varlen sequences; return the next row offset."""
    p, c, r = len(prompt), len(chosen), len(rejected)
    group = 2 * local if mode == 1 else local
    sequences = [(prompt, chosen, CHOSEN)] if mode == 2 else [(prompt, chosen, CHOSEN), (prompt, rejected, REJECTED)]
    if mode == 0:
        # [P C R]: R is laid out after C but positioned (and attending) as if right after P.
        _tokens(out, np.concatenate([prompt, chosen, rejected]),
                np.concatenate([np.arange(p + c), np.arange(p, p + r)]),
                local, group, [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r)
        _labels(out, [start + p - 1, *range(start + p, start + p + c - 1)], chosen, local, CHOSEN)
        _labels(out, [start + p - 1, *range(start + p + c, start + p + c + r - 1)], rejected, local, REJECTED)
        _sequence(out, p + c, range(start, start + p + c))
        _sequence(out, r, [*range(start, start + p), *range(start + p + c, start + p + c + r)])
        return start + p + c + r
    for offset, (prefix, answer, segment) in enumerate(sequences):
        length = p + len(answer)
        _tokens(out, np.concatenate([prefix, answer]), np.arange(length), local, group + offset,
                [PROMPT] * p + [segment] * len(answer))
        _labels(out, range(start + p - 1, start + length - 1), answer, local, segment)
        _sequence(out, length, range(start, start + length))
        start += length
    return start


def _tokens(out, ids, positions, example, group, segments) -> None:
    out["input_ids"].extend(int(t) for t in ids)
    out["position_ids"].extend(int(t) for t in positions)
    out["example_ids"].extend([example] * len(ids))
    out["group_ids"].extend([group] * len(ids))
    out["segment_ids"].extend(segments)


def _labels(out, rows, targets, example, segment) -> None:
    rows = list(rows)
    out["label_index"].extend(rows)
    out["targets"].extend(int(t) for t in targets)
    out["label_example"].extend([example] * len(rows))
    out["label_segment"].extend([segment] * len(rows))


def _sequence(out, queries, keys) -> None:
    keys = list(keys)
    out["seq_lens_q"].append(queries)
    out["seq_lens_k"].append(len(keys))
    out["kv_index"].extend(keys)
