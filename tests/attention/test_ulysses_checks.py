"""Argument checks of the Ulysses pieces that need no process group (the collective itself is
tested with 2 gloo processes in tests/distributed/test_sequence_parallel.py)."""

from __future__ import annotations

import pytest
import torch

from fastalign.attention import PackedAttention, SequenceParallelGroup
from fastalign.attention.ulysses import all_to_all, heads_to_sequence
from fastalign.models import PolicyModel
from fastalign.models.sequence_parallel import local_labels, sum_over_group
from fastalign.packing import pack_preference_examples
from tests.models.tiny_models import example_lists, tiny_model


def _row():
    (row,) = pack_preference_examples(*example_lists(), token_budget=128)
    return row


@pytest.mark.parametrize("rank, size", [(0, 0), (2, 2), (-1, 2), (0, True), (0.0, 2)])
def test_bad_groups_are_refused(rank, size):
    with pytest.raises(ValueError, match="must be an int"):
        SequenceParallelGroup(None, rank, size)


def test_head_counts_must_divide_by_the_group():
    group = SequenceParallelGroup(None, 0, 3)
    with pytest.raises(ValueError, match="4 attention heads cannot be split over sequence_parallel=3"):
        heads_to_sequence(torch.zeros(1, 4, 6, 8), group)
    with pytest.raises(ValueError, match="does not divide by the sequence-parallel size 3"):
        all_to_all(torch.zeros(1, 3, 5, 8), 2, 1, group)
    with pytest.raises(TypeError, match="group must be a SequenceParallelGroup"):
        all_to_all(torch.zeros(2), 0, 0, 2)
    with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
        PackedAttention.from_batch(_row(), group)  # 40 tokens
    with pytest.raises(TypeError, match="sequence_parallel must be None or a SequenceParallelGroup"):
        PolicyModel(tiny_model("llama"), sequence_parallel=2)


def test_a_group_of_one_is_the_plain_path():
    group = SequenceParallelGroup(None, 0, 1)
    x = torch.randn(1, 4, 6, 8)
    assert all_to_all(x, 1, 2, group) is x and sum_over_group(x, group) is x
    assert PolicyModel(tiny_model("llama"), sequence_parallel=group).sequence_parallel is None


def test_each_label_belongs_to_exactly_one_slice():
    row = _row()
    seen = []
    for rank in range(4):
        positions, rows = local_labels(row, SequenceParallelGroup(None, rank, 4), 10)
        assert rows.min() >= 0 and rows.max() < 10
        assert torch.equal(row.label_index[positions] - 10 * rank, rows)
        seen.append(positions)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(row.label_index.numel()))
