"""Helpers shared by fastalign's tests and benchmarks: the tolerance rule and memory probes.

Shipped with the package so that users' own tests of fastalign-based code can use them.
"""

from fastalign.testing.memory import AllocationRecorder
from fastalign.testing.numerics import (
    assert_close_to_oracle,
    error_floor,
    max_abs_error,
    relative_error,
)

__all__ = [
    "AllocationRecorder",
    "assert_close_to_oracle",
    "error_floor",
    "max_abs_error",
    "relative_error",
]
