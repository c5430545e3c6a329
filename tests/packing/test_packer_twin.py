"""The C++ ``pack_layout`` equals its pure-Python twin: same arrays, dtypes and error messages."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastalign._extension import native_extension
from fastalign.packing import pack_completion_examples, pack_preference_examples
from fastalign.packing.layout_python import LAYOUT_KEYS, MODES, OVERFLOW, pack_layout_python

requires_ext = pytest.mark.skipif(
    native_extension() is None and os.environ.get("FASTALIGN_REQUIRE_EXT") != "1",
    reason="C++ extension not built (CI sets FASTALIGN_REQUIRE_EXT=1, so it never skips there)",
)
pytestmark = requires_ext

INT8_KEYS = {"status", "segment_ids", "label_segment"}


# ---------------------------------------------------------------------------------------------
# Strategies and helpers
# ---------------------------------------------------------------------------------------------


@st.composite
def packing_calls(draw):
    """A mode, its token lists (lengths 1..12, ids 0..50, sometimes -1) and packer options."""
    mode = draw(st.sampled_from(tuple(MODES)))
    count = draw(st.integers(0, 8))
    low = draw(st.sampled_from([0] * 7 + [-1]))  # an eighth of the calls may hold a negative id
    token_lists = st.lists(
        st.lists(st.integers(low, 50), min_size=1, max_size=12), min_size=count, max_size=count
    )
    lists = [draw(token_lists) for _ in range(2 if mode == "completion" else 3)]
    options = {
        # Budgets 2..4 are below some mode's minimum; keep them a minority of the draws.
        "token_budget": draw(st.integers(5, 40) | st.integers(2, 4)),
        "max_prompt_length": draw(st.none() | st.integers(1, 12)),
        "max_completion_length": draw(st.none() | st.integers(1, 12)),
        "on_overflow": draw(st.sampled_from(tuple(OVERFLOW))),
        "vocab_size": draw(st.none() | st.integers(51, 60) | st.integers(45, 50)),
        "sort_by_length": draw(st.booleans()),
    }
    return mode, lists, options


def _flatten(lists):
    offsets = np.cumsum([0] + [len(tokens) for tokens in lists]).astype(np.int64)
    flat = np.concatenate([np.asarray(t, np.int64) for t in lists]) if lists else np.zeros(0, np.int64)
    return flat, offsets


def _layout_arguments(mode, lists, options):
    """The positional arguments ``pack.py`` passes to ``pack_layout`` / ``pack_layout_python``."""
    prompt, chosen = _flatten(lists[0]), _flatten(lists[1])
    if mode == "completion":
        rejected = (np.zeros(0, np.int64), np.zeros(len(lists[0]) + 1, np.int64))
    else:
        rejected = _flatten(lists[2])
    limit = lambda value: -1 if value is None else value  # noqa: E731
    return (
        *prompt, *chosen, *rejected, options["token_budget"], limit(options["max_prompt_length"]),
        limit(options["max_completion_length"]), OVERFLOW[options["on_overflow"]], MODES[mode],
        limit(options["vocab_size"]), options.get("sort_by_length", True),
    )


def _outcome(call, *args, **kwargs):
    """``(result, None)`` or ``(None, message)`` when the call raises ``ValueError``."""
    try:
        return call(*args, **kwargs), None
    except ValueError as error:
        return None, str(error)


def _assert_same_layout(cpp, python):
    assert list(cpp) == list(python)
    assert set(cpp) == set(LAYOUT_KEYS)
    for key in LAYOUT_KEYS:
        expected_dtype = np.int8 if key in INT8_KEYS else np.int64
        assert python[key].dtype == expected_dtype, key
        assert cpp[key].dtype == expected_dtype, key
        assert cpp[key].ndim == 1, key
        assert np.array_equal(cpp[key], python[key]), key


def _pack(mode, lists, options, backend):
    if mode == "completion":
        return pack_completion_examples(*lists, **options, backend=backend)
    return pack_preference_examples(*lists, **options, share_prompt=mode == "shared", backend=backend)


def _assert_same_rows(cpp, python):
    assert cpp.stats == python.stats
    assert len(cpp) == len(python)
    for cpp_row, python_row in zip(cpp, python):
        for field in dataclasses.fields(cpp_row):
            a, b = getattr(cpp_row, field.name), getattr(python_row, field.name)
            if isinstance(b, torch.Tensor):
                assert a.dtype == b.dtype and torch.equal(a, b), field.name
            else:
                assert a == b, field.name


# ---------------------------------------------------------------------------------------------
# Property tests: identical output, or identical ValueError
# ---------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(packing_calls())
def test_native_pack_layout_equals_python_twin(call):
    arguments = _layout_arguments(*call)
    cpp, cpp_error = _outcome(native_extension().pack_layout, *arguments)
    python, python_error = _outcome(pack_layout_python, *arguments)
    assert cpp_error == python_error
    if python is not None:
        _assert_same_layout(cpp, python)


@settings(max_examples=200, deadline=None)
@given(packing_calls())
def test_cpp_backend_packs_like_python_backend(call):
    mode, lists, options = call
    cpp, cpp_error = _outcome(_pack, mode, lists, options, "cpp")
    python, python_error = _outcome(_pack, mode, lists, options, "python")
    assert cpp_error == python_error
    if python is not None:
        _assert_same_rows(cpp, python)


@pytest.mark.parametrize("mode", tuple(MODES))
@pytest.mark.parametrize("on_overflow", tuple(OVERFLOW))
def test_many_examples_many_rows(mode, on_overflow):
    rng = np.random.default_rng(MODES[mode] * 3 + OVERFLOW[on_overflow])
    lists = [
        [rng.integers(0, 1000, rng.integers(1, 40)).tolist() for _ in range(300)]
        for _ in range(2 if mode == "completion" else 3)
    ]
    options = {"token_budget": 160, "max_prompt_length": None, "max_completion_length": None,
               "on_overflow": "drop" if on_overflow == "error" else on_overflow, "vocab_size": 1000}
    arguments = _layout_arguments(mode, lists, options)
    python = pack_layout_python(*arguments)
    assert len(python["row_token_offsets"]) > 10
    _assert_same_layout(native_extension().pack_layout(*arguments), python)


def test_forcecast_accepts_other_integer_dtypes():
    arguments = list(_layout_arguments("shared", [[[1, 2]], [[3]], [[4, 5]]], {
        "token_budget": 8, "max_prompt_length": None, "max_completion_length": None,
        "on_overflow": "error", "vocab_size": None}))
    expected = pack_layout_python(*arguments)
    for i in range(6):
        arguments[i] = arguments[i].astype(np.int32)
    _assert_same_layout(native_extension().pack_layout(*arguments), expected)


# ---------------------------------------------------------------------------------------------
# Errors: the same ValueError message from both
# ---------------------------------------------------------------------------------------------

NO_LIMITS = {"max_prompt_length": None, "max_completion_length": None, "on_overflow": "error",
             "vocab_size": None}


@pytest.mark.parametrize(
    "mode,lists,options,match",
    [
        ("shared", [[[1], []], [[2], [3]], [[4], [5]]], {}, r"prompt_ids\[1\] is empty"),
        ("shared", [[[1], [2]], [[2], []], [[4], [5]]], {}, r"chosen_ids\[1\] is empty"),
        ("unshared", [[[1], [2]], [[2], [3]], [[], [5]]], {}, r"rejected_ids\[0\] is empty"),
        ("completion", [[[1, 2]], [[]]], {}, r"chosen_ids\[0\] is empty"),
        ("shared", [[[1], [2, -3]], [[2], [3]], [[4], [5]]], {}, r"prompt_ids\[1\] holds token id -3, outside >= 0"),
        ("unshared", [[[1], [2]], [[2], [3]], [[4], [5, 9]]], {"vocab_size": 9},
         r"rejected_ids\[1\] holds token id 9, outside \[0, vocab_size=9\)"),
        ("completion", [[[1]], [[7, 70]]], {"vocab_size": 50}, r"chosen_ids\[0\] holds token id 70"),
        ("shared", [[[1] * 3, [1] * 9], [[2] * 3, [2]], [[3], [3]]], {},
         r"example 1 needs 11 tokens \(prompt 9, chosen 1, rejected 1\) but token_budget is 10"),
        ("unshared", [[[1] * 5], [[2]], [[3]]], {}, r"example 0 needs 12 tokens \(prompt 5, chosen 1, rejected 1\)"),
        ("completion", [[[1] * 6], [[2] * 6]], {}, r"example 0 needs 12 tokens \(prompt 6, chosen 6, rejected 0\)"),
        ("shared", [[[1]], [[2]], [[3]]], {"token_budget": 2}, r"token_budget must be >= 3 in this mode, got 2"),
        ("unshared", [[[1]], [[2]], [[3]]], {"token_budget": 3}, r"token_budget must be >= 4 in this mode, got 3"),
        ("completion", [[[1]], [[2]]], {"token_budget": 1}, r"token_budget must be >= 2 in this mode, got 1"),
        # The budget is checked first, then each part in turn: every example non-empty, then ids.
        ("shared", [[[]], [[-1]], [[3]]], {"token_budget": 0}, r"token_budget must be >= 3"),
        ("shared", [[[-1]], [[]], [[3]]], {}, r"prompt_ids\[0\] holds token id -1"),
        ("shared", [[[-1], []], [[2], [3]], [[3], [4]]], {}, r"prompt_ids\[1\] is empty"),
        # max_prompt_length / max_completion_length apply before the budget check.
        ("shared", [[[1] * 9], [[2] * 9], [[3] * 9]], {"max_prompt_length": 4, "max_completion_length": 4},
         r"example 0 needs 12 tokens \(prompt 4, chosen 4, rejected 4\)"),
    ],
)
def test_same_error_messages(mode, lists, options, match):
    options = {**NO_LIMITS, "token_budget": 10, **options}
    arguments = _layout_arguments(mode, lists, options)
    with pytest.raises(ValueError, match=match) as python_error:
        pack_layout_python(*arguments)
    with pytest.raises(ValueError) as cpp_error:
        native_extension().pack_layout(*arguments)
    assert str(cpp_error.value) == str(python_error.value)
    for backend in ("cpp", "python"):
        with pytest.raises(ValueError) as packer_error:
            _pack(mode, lists, options, backend)
        assert str(packer_error.value) == str(python_error.value)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"mode": 3}, "mode must be"),
        ({"overflow": 7}, "overflow must be"),
        ({1: np.array([0, 1], np.int64)}, "prompt_offsets must have"),
        ({5: np.array([0, 0, 1], np.int64)}, "rejected_offsets must have"),
        ({"mode": 2}, "rejected_offsets must be all zeros in completion mode"),
    ],
)
def test_native_rejects_malformed_calls(change, match):
    """Calls pack.py never makes (the twin does not check them): a clear error, not a crash."""
    arguments = list(_layout_arguments("shared", [[[1, 2]], [[3]], [[4]]], {**NO_LIMITS, "token_budget": 8}))
    names = {"overflow": 9, "mode": 10}
    for key, value in change.items():
        arguments[names.get(key, key)] = value
    with pytest.raises(ValueError, match=match):
        native_extension().pack_layout(*arguments)
