"""Argument checks shared by the packers, run before the C++ extension or its Python twin.

The C++ side counts in int64. A Python int past that range made pybind11 raise its
"incompatible function arguments" ``TypeError`` while the twin accepted it (or overflowed
elsewhere), and an unsigned id past it was cast to a negative one; checking here, once, keeps
the two backends in agreement and names the argument.
"""

from __future__ import annotations

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT64_RANGE = "2**63 - 1 (the packer counts in int64)"


def check_int(name: str, value: object, *, low: int | None = None, optional: bool = False) -> int | None:
    """``value`` as a Python int in ``[low, 2**63 - 1]`` (``None`` passes when ``optional``).

    Without ``low`` only the int64 range is enforced: the layout then gives its own message
    for a value too small (e.g. a token budget below one example's minimum).
    """
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = "None or an int" if optional else "an int"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    number = int(value)
    if low is not None and number < low:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an int >= {low}, got {value!r}")
    if number > INT64_MAX:
        raise ValueError(f"{name} must be at most {INT64_RANGE}, got {value!r}")
    if number < INT64_MIN:
        raise ValueError(f"{name} must be at least -2**63 (the packer counts in int64), got {value!r}")
    return number


def check_bool(name: str, value: object) -> bool:
    """A real bool: ``bool("no")`` is True, so a truthiness test would accept it silently."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def above_int64(array: np.ndarray) -> tuple[int, int] | None:
    """(index, value) of an unsigned entry an int64 cast would turn negative, if any (numpy
    reads a list holding ``2**63`` as uint64)."""
    if array.size and np.issubdtype(array.dtype, np.unsignedinteger):
        index = int(np.argmax(array))
        if int(array[index]) > INT64_MAX:
            return index, int(array[index])
    return None
