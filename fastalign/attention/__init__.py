"""Prefix-shared / varlen attention for packed rows, registered with transformers."""

from fastalign.attention.metadata import PackedAttention
from fastalign.attention.registry import (
    BACKENDS,
    PACKED_KWARG,
    PREFIX,
    Backend,
    ModelRequirements,
    is_packed_backend,
    packed_forward,
    register_backends,
    select_backend,
)
from fastalign.attention.ulysses import SequenceParallelGroup

__all__ = [
    "BACKENDS",
    "PACKED_KWARG",
    "PREFIX",
    "Backend",
    "ModelRequirements",
    "PackedAttention",
    "SequenceParallelGroup",
    "is_packed_backend",
    "packed_forward",
    "register_backends",
    "select_backend",
]
