"""Properties of the packer output: nothing lost or duplicated, budgets kept, labels right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastalign.packing import CHOSEN, PROMPT, REJECTED, PackedBatch, pack_completion_examples, pack_preference_examples

tokens = st.lists(st.integers(0, 40), min_size=1, max_size=10)


@st.composite
def problems(draw):
    count = draw(st.integers(1, 8))
    triples = [(draw(tokens), draw(tokens), draw(tokens)) for _ in range(count)]
    return (
        [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples],
        draw(st.integers(4, 48)), draw(st.sampled_from(["drop", "truncate"])),
        draw(st.sampled_from([None, 3])), draw(st.sampled_from([None, 4])), draw(st.booleans()),
    )


def _answers(row: PackedBatch, local: int) -> dict[int, list[int]]:
    """Answer tokens of one example, read back through the label index and targets."""
    ids = row.input_ids[0]
    picked = row.label_example == local
    out = {}
    for segment in (CHOSEN, REJECTED):
        rows = row.label_index[picked & (row.label_segment == segment)]
        targets = row.targets[picked & (row.label_segment == segment)]
        tokens_of_segment = ids[(row.example_ids == local) & (row.segment_ids == segment)]
        assert torch.equal(targets, tokens_of_segment), "targets are the answer tokens, in order"
        # The predicting row sits one position before its target, inside the same group.
        target_rows = torch.nonzero((row.example_ids == local) & (row.segment_ids == segment)).flatten()
        assert torch.equal(row.position_ids[0, rows] + 1, row.position_ids[0, target_rows])
        assert torch.equal(row.group_ids[rows], row.group_ids[target_rows])
        out[segment] = targets.tolist()
    return out


@settings(max_examples=120, deadline=None)
@given(problems())
def test_packing_invariants(problem):
    prompts, chosen, rejected, budget, overflow, max_prompt, max_answer, share = problem
    rows = pack_preference_examples(
        prompts, chosen, rejected, token_budget=budget, on_overflow=overflow,
        max_prompt_length=max_prompt, max_completion_length=max_answer, share_prompt=share,
    )
    seen = []
    for row in rows:
        assert row.num_tokens <= budget
        assert row.label_index.max() < row.num_tokens
        assert int(row.cu_seqlens_q[-1]) == row.num_tokens and int(row.cu_seqlens_k[-1]) == row.kv_index.numel()
        for local, index in enumerate(row.example_index.tolist()):
            seen.append(index)
            prompt = row.input_ids[0][(row.example_ids == local) & (row.segment_ids == PROMPT)].tolist()
            kept_prompt = prompt if share else prompt[: len(prompt) // 2]
            if not share:
                assert prompt[len(prompt) // 2 :] == kept_prompt, "both copies of the prompt are equal"
            answers = _answers(row, local)
            # Truncation keeps the end of the prompt and the start of each answer.
            assert kept_prompt and prompts[index][len(prompts[index]) - len(kept_prompt) :] == kept_prompt
            assert answers[CHOSEN] and chosen[index][: len(answers[CHOSEN])] == answers[CHOSEN]
            assert answers[REJECTED] and rejected[index][: len(answers[REJECTED])] == answers[REJECTED]
            # Examples that fit after the length limits are cut by exactly those limits.
            limited = (min(len(prompts[index]), max_prompt or budget), min(len(chosen[index]), max_answer or budget),
                       min(len(rejected[index]), max_answer or budget))
            if limited[0] * (1 if share else 2) + limited[1] + limited[2] <= budget:
                assert (len(kept_prompt), len(answers[CHOSEN]), len(answers[REJECTED])) == limited
    assert len(seen) == len(set(seen)), "no example packed twice"
    assert sorted(seen + list(rows.stats.dropped_examples)) == list(range(len(prompts))), "none lost"
    assert rows.stats.kept == len(seen) and rows.stats.tokens == sum(r.num_tokens for r in rows)
    if overflow == "truncate":
        assert rows.stats.dropped == 0


def test_shared_layout_of_one_example():
    (row,) = pack_preference_examples([[10, 11, 12]], [[20, 21]], [[30, 31, 32]], token_budget=8)
    assert row.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 31, 32]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]  # R continues from len(P)
    # The last prompt row (2) predicts both C[0] and R[0]: an index with repeats.
    assert row.label_index.tolist() == [2, 3, 2, 5, 6]
    assert row.targets.tolist() == [20, 21, 30, 31, 32]
    assert row.label_segment.tolist() == [CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED]
    assert row.cu_seqlens_q.tolist() == [0, 5, 8] and row.cu_seqlens_k.tolist() == [0, 5, 11]
    assert row.kv_index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7]


def test_drop_and_truncate_are_counted():
    prompts, chosen, rejected = [[1] * 9, [2]], [[3], [4]], [[5], [6]]
    dropped = pack_preference_examples(prompts, chosen, rejected, token_budget=6, on_overflow="drop")
    assert dropped.stats.dropped == 1 and dropped.stats.dropped_examples == (0,)
    assert [row.example_index.tolist() for row in dropped] == [[1]]
    truncated = pack_preference_examples(prompts, chosen, rejected, token_budget=6, on_overflow="truncate")
    assert truncated.stats.truncated == 1 and truncated.stats.dropped == 0
    assert sorted(torch.cat([row.prompt_lengths for row in truncated]).tolist()) == [1, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompt_ids=[[]], chosen_ids=[[1]], rejected_ids=[[2]]), r"prompt_ids\[0\] is empty"),
        (dict(prompt_ids=[[1]], chosen_ids=[[1], [2]], rejected_ids=[[2]]), "chosen_ids has 2 examples"),
        (dict(prompt_ids=[[1]], chosen_ids=[[]], rejected_ids=[[2]]), r"chosen_ids\[0\] is empty"),
        (dict(prompt_ids=[[1]], chosen_ids=[[1]], rejected_ids=[[-3]]), r"rejected_ids\[0\] holds token id -3"),
        (dict(prompt_ids=[[1]], chosen_ids=[[99]], rejected_ids=[[2]], vocab_size=50), r"outside \[0, vocab_size=50\)"),
        (dict(prompt_ids=[[1] * 30], chosen_ids=[[1]], rejected_ids=[[2]]), "example 0 needs 32 tokens"),
        (dict(prompt_ids=[[1]], chosen_ids=[[1]], rejected_ids=[[2]], token_budget=2), "token_budget must be >= 3"),
        (dict(prompt_ids=[[1]], chosen_ids=[[1]], rejected_ids=[[2]], on_overflow="clip"), "on_overflow must be one of"),
        (dict(prompt_ids=[[1]], chosen_ids=[[1]], rejected_ids=[[2]], max_prompt_length=0), "max_prompt_length must be"),
        (dict(prompt_ids="abc", chosen_ids=[[1]], rejected_ids=[[2]]), "prompt_ids must be a list of token-id lists"),
        (dict(prompt_ids=[[1.5]], chosen_ids=[[1]], rejected_ids=[[2]]), r"prompt_ids\[0\] must be a flat list of ints"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, message):
    kwargs.setdefault("token_budget", 16)
    with pytest.raises(ValueError, match=message):
        pack_preference_examples(**kwargs)


def test_completion_mode_and_device_moves():
    rows = pack_completion_examples([[1, 2], [3]], [[4], [5, 6, 7]], token_budget=16)
    (row,) = rows
    assert row.mode == "completion" and row.rejected_lengths.tolist() == [0, 0]
    assert row.label_index.tolist() == [1, 3, 4, 5] and row.targets.tolist() == [4, 5, 6, 7]
    moved = row.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.max_seqlen_q == row.max_seqlen_q
    assert np.array_equal(row.pin_memory().targets.numpy(), row.targets.numpy()) if torch.cuda.is_available() else True
