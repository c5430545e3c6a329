"""First-fit-decreasing assignment of sequences to rows of a token budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastalign._extension import native_extension
from fastalign.packing._checks import INT64_RANGE, above_int64, check_int

BACKENDS = ("auto", "cpp", "python")


def first_fit_decreasing_python(lengths: np.ndarray, capacity: int, decreasing: bool = True) -> np.ndarray:
    """Pure-Python twin of the C++ packer: identical output, O(items x bins). With
    ``decreasing=False`` items are placed in input order (plain first-fit)."""
    order = list(range(len(lengths)))
    if decreasing:
        order.sort(key=lambda i: -int(lengths[i]))
    room: list[int] = []
    bin_of = np.full(len(lengths), -1, dtype=np.int64)
    for item in order:
        need = int(lengths[item])
        for bin_index, free in enumerate(room):
            if free >= need:
                room[bin_index] -= need
                bin_of[item] = bin_index
                break
        else:
            room.append(capacity - need)
            bin_of[item] = len(room) - 1
    return bin_of


def first_fit_decreasing(
    lengths: Sequence[int] | np.ndarray, capacity: int, *, backend: str = "auto"
) -> np.ndarray:
    """Assign items of the given lengths to bins of ``capacity`` tokens.

    Args:
        lengths: 1-d sequence of ints in ``[1, capacity]``.
        capacity: tokens per bin (row budget), in ``[1, 2**63 - 1]``.
        backend: ``"auto"`` (C++ when built), ``"cpp"`` (required) or ``"python"``.

    Returns:
        int64 array ``[len(lengths)]`` of bin indices; items are placed longest first (ties in
        input order) into the lowest-numbered bin with room; bins are numbered as opened.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    capacity = check_int("capacity", capacity, low=1)  # in int64, so both backends take it
    array = np.asarray(lengths)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-d sequence of ints, got shape {array.shape} dtype {array.dtype}")
    if (too_big := above_int64(array)) is not None:
        raise ValueError(f"lengths[{too_big[0]}] = {too_big[1]} is above {INT64_RANGE}")
    array = array.astype(np.int64, copy=False)
    bad = np.flatnonzero((array < 1) | (array > capacity))
    if bad.size:
        raise ValueError(
            f"lengths[{bad[0]}] = {array[bad[0]]} is outside [1, capacity={capacity}]"
        )
    native = native_extension() if backend != "python" else None
    if backend == "cpp" and native is None:
        raise ValueError("backend='cpp' but the C++ extension fastalign._C is not built")
    if native is not None:
        return native.first_fit_decreasing(array, capacity)
    return first_fit_decreasing_python(array, capacity)
