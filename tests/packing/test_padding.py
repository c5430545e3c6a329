"""``pad_to_multiple``: padding tokens change no per-example log-prob (their own attention group,
no labels), and the layout tensors stay consistent."""

from __future__ import annotations

import pytest
import torch

from fastalign.models import packed_logprobs
from fastalign.packing import PackedBatch, pack_preference_examples, pad_to_multiple
from tests.models.tiny_models import example_lists, tiny_model


def _row() -> PackedBatch:
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    return row


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_padding_changes_no_log_prob(family):
    row = _row()
    padded = pad_to_multiple(row, 7)  # 40 -> 42
    assert padded.num_tokens == 42
    model = tiny_model(family)
    with torch.no_grad():
        expected, got = packed_logprobs(model, row), packed_logprobs(model, padded)
    torch.testing.assert_close(got.chosen, expected.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.rejected, expected.rejected, atol=1e-5, rtol=0)


def test_padding_layout():
    row = _row()
    padded = pad_to_multiple(row, 16)  # 40 -> 48
    tail = slice(row.num_tokens, None)
    assert padded.group_ids[tail].unique().tolist() == [int(row.group_ids.max()) + 1]
    assert padded.example_ids[tail].eq(-1).all() and padded.segment_ids[tail].eq(0).all()
    assert padded.position_ids[0, tail].tolist() == list(range(8))
    assert padded.cu_seqlens_q[-1] == row.cu_seqlens_q[-1] + 8 and padded.cu_seqlens_k[-1] == row.cu_seqlens_k[-1] + 8
    assert padded.kv_index[-8:].tolist() == list(range(40, 48))
    assert torch.equal(padded.label_index, row.label_index) and torch.equal(padded.targets, row.targets)
    assert pad_to_multiple(row, 8) is row  # already a multiple


@pytest.mark.parametrize("multiple, error", [(0, ValueError), (True, ValueError), (2.0, ValueError)])
def test_bad_multiples_are_refused(multiple, error):
    with pytest.raises(error, match="multiple must be an int >= 1"):
        pad_to_multiple(_row(), multiple)
    with pytest.raises(TypeError, match="batch must be a PackedBatch"):
        pad_to_multiple({"input_ids": None}, 2)
