"""First-fit-decreasing: the C++ extension equals its Python twin, and packs correctly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastalign._extension import native_extension
from fastalign.packing import first_fit_decreasing
from fastalign.packing.bin_packing import first_fit_decreasing_python

requires_ext = pytest.mark.skipif(
    native_extension() is None and os.environ.get("FASTALIGN_REQUIRE_EXT") != "1",
    reason="C++ extension not built (CI sets FASTALIGN_REQUIRE_EXT=1, so it never skips there)",
)


@st.composite
def packing_problems(draw):
    capacity = draw(st.integers(1, 64))
    lengths = draw(st.lists(st.integers(1, capacity), max_size=60))
    return lengths, capacity


def _check_valid_packing(lengths, capacity, bins):
    assert bins.shape == (len(lengths),) and bins.dtype == np.int64
    if not lengths:
        return
    used = np.bincount(bins, weights=lengths)
    assert used.max() <= capacity
    assert set(bins.tolist()) == set(range(bins.max() + 1)), "bins are numbered without gaps"


@requires_ext
@settings(max_examples=200, deadline=None)
@given(packing_problems())
def test_cpp_equals_python_twin(problem):
    lengths, capacity = problem
    cpp = first_fit_decreasing(lengths, capacity, backend="cpp")
    python = first_fit_decreasing(lengths, capacity, backend="python")
    np.testing.assert_array_equal(cpp, python)
    _check_valid_packing(lengths, capacity, cpp)


@settings(max_examples=100, deadline=None)
@given(packing_problems())
def test_python_twin_is_first_fit(problem):
    lengths, capacity = problem
    bins = first_fit_decreasing_python(np.asarray(lengths, dtype=np.int64), capacity)
    _check_valid_packing(lengths, capacity, bins)
    # First fit: no item could have gone into a lower-numbered bin when it was placed.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    room = {}
    for item in order:
        for lower in range(bins[item]):
            assert room.get(lower, capacity) < lengths[item]
        room[bins[item]] = room.get(bins[item], capacity) - lengths[item]


def test_known_packing():
    bins = first_fit_decreasing([3, 8, 2, 5, 7, 1], 10)
    # Sorted: 8, 7, 5, 3, 2, 1 -> [8 2] [7 3] [5 1]
    assert bins.tolist() == [1, 0, 0, 2, 1, 2]


@pytest.mark.parametrize(
    "lengths,capacity,match",
    [
        ([3, 11], 10, r"lengths\[1\] = 11"),
        ([0, 2], 10, r"lengths\[0\] = 0"),
        ([2], 0, "capacity"),
        ([[1, 2]], 10, "1-d"),
        ([1.5], 10, "ints"),
    ],
)
def test_bad_inputs(lengths, capacity, match):
    with pytest.raises(ValueError, match=match):
        first_fit_decreasing(lengths, capacity)
    with pytest.raises(ValueError):
        first_fit_decreasing(lengths, capacity, backend="python")


def _run_without_extension(require: bool) -> subprocess.CompletedProcess:
    code = (
        "import sys, logging; sys.modules['fastalign._C'] = None; "
        "logging.basicConfig(level=logging.INFO); "
        "from fastalign.packing import first_fit_decreasing; "
        "print(first_fit_decreasing([3, 8, 2], 10).tolist())"
    )
    env = dict(os.environ, FASTALIGN_REQUIRE_EXT="1" if require else "0")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_falls_back_to_python_twin_with_one_log_line():
    result = _run_without_extension(require=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 0, 0]"
    assert result.stderr.count("pure-Python twins") == 1


def test_required_extension_missing_is_an_error():
    result = _run_without_extension(require=True)
    assert result.returncode != 0
    assert "FASTALIGN_REQUIRE_EXT=1" in result.stderr
