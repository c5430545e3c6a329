"""Integer arguments outside int64 (and non-bools where a bool is due) are refused with the
same ``ValueError`` by both backends, before either runs (issue 15): the C++ packer used to
raise pybind11's ``TypeError`` for ``token_budget >= 2**63`` while the Python twin took it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastalign._extension import native_extension
from fastalign.packing import first_fit_decreasing, pack_completion_examples, pack_preference_examples

BACKENDS = ["python"] + (["cpp"] if native_extension() is not None else [])
P, C, R = [[1, 2], [3]], [[4], [5, 6]], [[7], [8]]


def _preference(**kwargs):
    return lambda backend: pack_preference_examples(P, C, R, **{"token_budget": 16, **kwargs}, backend=backend)


def _completion(**kwargs):
    return lambda backend: pack_completion_examples(P, C, **{"token_budget": 16, **kwargs}, backend=backend)


INT64 = "(the packer counts in int64)"
CASES = {
    "token_budget=2**63": (_preference(token_budget=2**63),
                           f"token_budget must be at most 2**63 - 1 {INT64}, got 9223372036854775808"),
    "token_budget=np.uint64(2**64-1)": (_completion(token_budget=np.uint64(2**64 - 1)),
                                        f"token_budget must be at most 2**63 - 1 {INT64}"),
    "token_budget=-2**63-1": (_preference(token_budget=-(2**63) - 1),
                              f"token_budget must be at least -2**63 {INT64}, got -9223372036854775809"),
    "token_budget=16.0": (_preference(token_budget=16.0), "token_budget must be an int, got 16.0"),
    "token_budget=True": (_preference(token_budget=True), "token_budget must be an int, got True"),
    "max_prompt_length=2**63": (_preference(max_prompt_length=2**63),
                                f"max_prompt_length must be at most 2**63 - 1 {INT64}"),
    "max_completion_length=2**64": (_completion(max_completion_length=2**64),
                                    f"max_completion_length must be at most 2**63 - 1 {INT64}"),
    "max_completion_length=0": (_preference(max_completion_length=0),
                                "max_completion_length must be None or an int >= 1, got 0"),
    "vocab_size=2**63": (_preference(vocab_size=2**63), f"vocab_size must be at most 2**63 - 1 {INT64}"),
    "vocab_size='1000'": (_preference(vocab_size="1000"), "vocab_size must be None or an int, got '1000'"),
    "token id 2**63": (lambda backend: pack_preference_examples([[1], [2**63]], C, R, token_budget=16,
                                                                backend=backend),
                       f"prompt_ids[1] holds token id 9223372036854775808, above 2**63 - 1 {INT64}"),
    "uint64 token id 2**64-1": (lambda backend: pack_completion_examples(
        P, [np.array([4], np.uint64), np.array([5, 2**64 - 1], np.uint64)], token_budget=16, backend=backend),
        f"completion_ids[1] holds token id 18446744073709551615, above 2**63 - 1 {INT64}"),
    "sort_by_length='no'": (_preference(sort_by_length="no"), "sort_by_length must be True or False, got 'no'"),
    "sort_by_length=None": (_completion(sort_by_length=None), "sort_by_length must be True or False, got None"),
    "share_prompt=0": (_preference(share_prompt=0), "share_prompt must be True or False, got 0"),
    "capacity=2**63": (lambda backend: first_fit_decreasing([1, 2], 2**63, backend=backend),
                       f"capacity must be at most 2**63 - 1 {INT64}, got 9223372036854775808"),
    "capacity=0": (lambda backend: first_fit_decreasing([1], 0, backend=backend),
                   "capacity must be an int >= 1, got 0"),
    "lengths=[2**63]": (lambda backend: first_fit_decreasing([2**63], 2**63 - 1, backend=backend),
                        f"lengths[0] = 9223372036854775808 is above 2**63 - 1 {INT64}"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_refuse_with_the_same_message(case, backend):
    call, message = CASES[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call(backend)


def test_largest_int64_budget_packs_the_same_in_both():
    results = [pack_preference_examples(P, C, R, token_budget=2**63 - 1, max_prompt_length=2**63 - 1,
                                        vocab_size=2**63 - 1, backend=backend) for backend in BACKENDS]
    assert results[0].stats.rows == 1 and results[0].stats.token_budget == 2**63 - 1
    assert all(result.stats == results[0].stats for result in results)
    bins = [first_fit_decreasing(np.array([3, 2**62], np.uint64), 2**63 - 1, backend=b) for b in BACKENDS]
    assert all(np.array_equal(b, [0, 0]) for b in bins)
