"""``max_length``: a pair longer than ``token_budget`` gets a row of its own instead of being
truncated or dropped; above ``max_length`` the overflow policy applies (error naming the
example, truncation, or a drop that is logged as a warning) — identical with both backends."""

from __future__ import annotations

import logging

import pytest
import torch

from fastalign._extension import native_extension
from fastalign.packing import pack_completion_examples, pack_preference_examples

BACKENDS = ["python"] + (["cpp"] if native_extension() is not None else [])


def _examples():
    """Sizes P + C + R: 9, 30 (long), 6, 45 (long), 8, 70 (over max_length=60)."""
    sizes = [(5, 2, 2), (20, 5, 5), (2, 2, 2), (30, 10, 5), (4, 2, 2), (50, 10, 10)]
    prompts = [list(range(1, p + 1)) for p, _, _ in sizes]
    chosen = [[7] * c for _, c, _ in sizes]
    rejected = [[9] * r for _, _, r in sizes]
    return prompts, chosen, rejected


def _pack(**kwargs):
    prompts, chosen, rejected = _examples()
    options = dict(token_budget=16, max_length=60, on_overflow="truncate") | kwargs
    return pack_preference_examples(prompts, chosen, rejected, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_pairs_get_their_own_rows(backend):
    rows = _pack(backend=backend)
    sizes = {int(row.example_index[0]): row.num_tokens for row in rows if row.num_tokens > 16}
    assert sizes == {1: 30, 3: 45, 5: 60}  # example 5 truncated from 70 to max_length
    assert all(row.num_examples == 1 for row in rows if row.num_tokens > 16)
    assert all(row.num_tokens <= 16 for row in rows if row.num_examples > 1)
    kept = sorted(int(i) for row in rows for i in row.example_index)
    assert kept == list(range(6))  # nothing lost, nothing twice
    assert rows.stats.long_rows == 3 and rows.stats.truncated == 1 and rows.stats.dropped == 0
    assert rows.stats.fill <= 1.0
    # The long row is an ordinary packed row: its labels cover both answers of its example.
    long_row = next(row for row in rows if row.num_tokens == 45)
    assert long_row.targets.tolist() == [7] * 10 + [9] * 5


def test_both_backends_agree():
    if len(BACKENDS) < 2:
        pytest.skip("the C++ extension is not built")
    for sort_by_length in (True, False):
        python, cpp = (_pack(backend=b, sort_by_length=sort_by_length) for b in BACKENDS)
        assert len(python) == len(cpp)
        for a, b in zip(python, cpp):
            for name, value in vars(a).items():
                other = getattr(b, name)
                assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name


def test_row_order():
    longest_first = [row.num_tokens for row in _pack()]
    assert longest_first[:3] == [60, 45, 30]
    in_input_order = [int(row.example_index.min()) for row in _pack(sort_by_length=False)]
    assert in_input_order == sorted(in_input_order) and in_input_order[0] == 0


def test_over_max_length_is_an_error_naming_the_example():
    with pytest.raises(ValueError, match="example 5 needs 70 tokens .* token_budget is 60"):
        _pack(on_overflow="error")


def test_a_drop_is_never_silent(caplog):
    with caplog.at_level(logging.WARNING, logger="fastalign"):
        rows = _pack(on_overflow="drop")
    assert rows.stats.dropped_examples == (5,)
    assert any("1 of 6 examples dropped" in r.message and "examples 5" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastalign"):  # without max_length too
        rows = _pack(on_overflow="drop", max_length=None)
    assert rows.stats.dropped == 3 and any(r.levelno == logging.WARNING for r in caplog.records)


def test_completion_rows_take_max_length_too():
    prompts, chosen, _ = _examples()
    rows = pack_completion_examples(prompts, chosen, token_budget=16, max_length=60, on_overflow="error")
    assert sorted(row.num_tokens for row in rows if row.num_tokens > 16) == [25, 40, 60]


@pytest.mark.parametrize("max_length, match", [(8, "max_length must be >= token_budget"),
                                               (0, "max_length"), (2.5, "max_length")])
def test_bad_max_length_is_refused(max_length, match):
    with pytest.raises(ValueError, match=match):
        _pack(max_length=max_length)
