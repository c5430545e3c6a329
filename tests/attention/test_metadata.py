"""``PackedAttention`` (fastalign/attention/metadata.py) on small hand-made packed rows: the
metadata copied from the batch and the attention rule, checked cell by cell against masks
written out by hand.

The rule: chosen (C) and rejected (R) both see the shared prompt (P) and themselves causally,
never each other; tokens of different examples never see each other; a sliding window is
measured in position space (R continues at ``len(P)``).
"""

from __future__ import annotations

import pytest
import torch

from fastalign.attention import PackedAttention, SequenceParallelGroup
from fastalign.packing import pack_preference_examples

# Example 0: P = [1, 2], C = [4, 5], R = [7]; example 1: P = [3], C = [6], R = [8, 9].
PROMPTS, CHOSEN, REJECTED = [[1, 2], [3]], [[4, 5], [6]], [[7], [8, 9]]

# Shared layout: [P0 P0 C0 C0 R0 | P1 C1 R1 R1].
SHARED_MASK = [
    # P0 P0 C0 C0 R0 P1 C1 R1 R1
    [1, 0, 0, 0, 0, 0, 0, 0, 0],  # P0 pos 0
    [1, 1, 0, 0, 0, 0, 0, 0, 0],  # P0 pos 1
    [1, 1, 1, 0, 0, 0, 0, 0, 0],  # C0 pos 2
    [1, 1, 1, 1, 0, 0, 0, 0, 0],  # C0 pos 3
    [1, 1, 0, 0, 1, 0, 0, 0, 0],  # R0 pos 2: the prompt and itself, not C0
    [0, 0, 0, 0, 0, 1, 0, 0, 0],  # P1 pos 0: nothing of example 0
    [0, 0, 0, 0, 0, 1, 1, 0, 0],  # C1 pos 1
    [0, 0, 0, 0, 0, 1, 0, 1, 0],  # R1 pos 1: P1 and itself, not C1
    [0, 0, 0, 0, 0, 1, 0, 1, 1],  # R1 pos 2
]


def _shared_row():
    (row,) = pack_preference_examples(PROMPTS, CHOSEN, REJECTED, token_budget=64)
    return row


def _hand_made(group_ids, segment_ids, positions) -> PackedAttention:
    """Metadata built directly from per-token lists (the varlen fields are not used by the rule)."""
    empty = torch.zeros(1, dtype=torch.int32)
    return PackedAttention(
        group_ids=torch.tensor(group_ids), segment_ids=torch.tensor(segment_ids, dtype=torch.int8),
        positions=torch.tensor(positions), cu_seqlens_q=empty, cu_seqlens_k=empty,
        kv_index=torch.zeros(0, dtype=torch.int64), max_seqlen_q=0, max_seqlen_k=0,
    )


def test_from_batch_copies_the_row_description():
    row = _shared_row()
    assert row.input_ids.tolist() == [[1, 2, 4, 5, 7, 3, 6, 8, 9]]
    meta = PackedAttention.from_batch(row)
    assert meta.group_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert meta.segment_ids.tolist() == [0, 0, 1, 1, 2, 0, 1, 2, 2]
    assert meta.positions.tolist() == [0, 1, 2, 3, 2, 0, 1, 1, 2]  # R restarts at len(P)
    assert meta.cu_seqlens_q.tolist() == [0, 4, 5, 7, 9]  # [P0 C0] [R0] [P1 C1] [R1]
    assert meta.cu_seqlens_k.tolist() == [0, 4, 7, 9, 12]  # [P0 C0] [P0 R0] [P1 C1] [P1 R1]
    assert meta.kv_index.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 5, 7, 8]
    assert (meta.max_seqlen_q, meta.max_seqlen_k) == (4, 4)
    assert meta.num_tokens == meta.local_tokens == 9
    assert meta.sequence_parallel is None and meta.calls == 0


def test_dense_mask_of_a_shared_prompt_row():
    meta = PackedAttention.from_batch(_shared_row())
    mask = meta.dense_mask(None)
    assert mask.dtype == torch.bool
    assert mask.int().tolist() == SHARED_MASK


def test_hand_made_metadata_gives_the_same_rule():
    meta = _hand_made([0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 0, 1, 2, 2], [0, 1, 2, 3, 2, 0, 1, 1, 2])
    assert meta.dense_mask(None).int().tolist() == SHARED_MASK


def test_chosen_and_rejected_never_see_each_other_in_either_direction():
    # One example, P = 1 token, C = 2, R = 2, with R placed *before* C in the row: position
    # order alone would let C see R; the segment rule must still cut them apart.
    meta = _hand_made([0] * 5, [0, 2, 2, 1, 1], [0, 1, 2, 1, 2])
    assert meta.dense_mask(None).int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 1],
    ]


def test_examples_never_attend_across_groups_even_at_equal_positions():
    # Two prompt-only groups with identical positions and segments: only the group id separates them.
    meta = _hand_made([0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1])
    assert meta.dense_mask(None).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


def test_sliding_window_is_measured_in_positions():
    meta = PackedAttention.from_batch(_shared_row())
    window = meta.dense_mask(2).int().tolist()
    expected = [list(r) for r in SHARED_MASK]
    # Kept only when pos_q - pos_k < 2: these (query, key) cells of the full rule drop out.
    for q, k in [(2, 0), (3, 0), (3, 1), (4, 0), (8, 5)]:
        expected[q][k] = 0
    assert window == expected
    # R0 sits at row index 4 but position 2: with window 2 it still sees P0@1 (distance 1 in positions).
    assert window[4][1] == 1
    # Window 1: only equal positions, and C0@2 / R0@2, C1@1 / R1@1 still do not see each other.
    assert meta.dense_mask(1).int().tolist() == torch.eye(9, dtype=torch.int64).tolist()


def test_allowed_broadcasts_over_index_tensors():
    meta = PackedAttention.from_batch(_shared_row())
    q = torch.tensor([4, 4, 4, 7, 8])
    k = torch.tensor([0, 2, 3, 6, 7])
    assert meta.allowed(q, k, None).tolist() == [True, False, False, False, True]
    column = meta.allowed(torch.tensor([[4], [2]]), torch.tensor([[0, 1, 2, 3, 4]]), None)
    assert column.tolist() == [[True, True, False, False, True], [True, True, True, False, False]]


def test_groups_table_and_group_mask():
    meta = PackedAttention.from_batch(_shared_row())
    index, valid = meta.groups()
    assert index.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 0]]
    assert valid.tolist() == [[True] * 5, [True, True, True, True, False]]
    group_mask = meta.group_mask(None).int().tolist()
    assert group_mask[0] == [row[:5] for row in SHARED_MASK[:5]]
    # Example 1's four tokens, then the padding slot: it sees only itself, and nobody sees it.
    assert group_mask[1] == [row[5:] + [0] for row in SHARED_MASK[5:]] + [[0, 0, 0, 0, 1]]


def test_groups_of_an_unshared_row():
    (row,) = pack_preference_examples(PROMPTS, CHOSEN, REJECTED, token_budget=64, share_prompt=False)
    meta = PackedAttention.from_batch(row)
    # [P0 C0] [P0 R0] [P1 C1] [P1 R1]: four groups of 4, 3, 2, 3 tokens.
    index, valid = meta.groups()
    assert index.tolist() == [[0, 1, 2, 3], [4, 5, 6, 0], [7, 8, 0, 0], [9, 10, 11, 0]]
    assert valid.sum(1).tolist() == [4, 3, 2, 3]
    # Every group is plain causal here (each holds one answer).
    lower = torch.ones(4, 4, dtype=torch.bool).tril()
    mask = meta.group_mask(None)
    for g, n in enumerate([4, 3, 2, 3]):
        assert torch.equal(mask[g, :n, :n], lower[:n, :n]), g


def test_masks_are_cached_per_window():
    meta = PackedAttention.from_batch(_shared_row())
    assert meta.dense_mask(None) is meta.dense_mask(None)
    assert meta.dense_mask(2) is not meta.dense_mask(None)
    assert meta.group_mask(3) is meta.group_mask(3)
    built = []
    first = meta.cached(("custom",), lambda: built.append(1) or "value")
    assert first == meta.cached(("custom",), lambda: built.append(2) or "other") == "value"
    assert built == [1]


def test_sequence_parallel_slices_and_divisibility():
    row = _shared_row()  # 9 tokens
    meta = PackedAttention.from_batch(row, SequenceParallelGroup(None, 1, 3))
    assert (meta.num_tokens, meta.local_tokens) == (9, 3)
    with pytest.raises(ValueError, match="a row of 9 tokens cannot be split over 2 ranks"):
        PackedAttention.from_batch(row, SequenceParallelGroup(None, 0, 2))
