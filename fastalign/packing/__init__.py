"""Packed, prefix-shared batches: ``PackedBatch`` and the packers (C++ with a Python twin)."""

from fastalign.packing.batch import CHOSEN, PROMPT, REJECTED, PackedBatch
from fastalign.packing.bin_packing import first_fit_decreasing
from fastalign.packing.padding import pad_to_multiple
from fastalign.packing.pack import PackedRows, PackingStats, pack_completion_examples, pack_preference_examples

__all__ = [
    "CHOSEN",
    "PROMPT",
    "REJECTED",
    "PackedBatch",
    "PackedRows",
    "PackingStats",
    "first_fit_decreasing",
    "pack_completion_examples",
    "pack_preference_examples",
    "pad_to_multiple",
]
