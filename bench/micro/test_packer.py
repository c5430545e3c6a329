"""The packer: C++ (pybind11) against its pure-Python twin on HH-like example lengths."""

from __future__ import annotations

import pytest

from fastalign.bench.micro import record_benchmark
from fastalign._extension import native_extension
from fastalign.bench.workloads import LengthDistribution, synthetic_preference_data
from fastalign.packing import pack_preference_examples


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_pack_preference_examples(benchmark, backend):
    if backend == "cpp" and native_extension() is None:
        pytest.skip("the C++ extension fastalign._C is not built")
    import torch

    data = synthetic_preference_data(2048, LengthDistribution(prompt_mean=448, answer_mean=64), vocab_size=32000, seed=0)

    def pack():
        pack_preference_examples(prompt_ids=data.prompts, chosen_ids=data.chosen, rejected_ids=data.rejected,
                                 token_budget=8192, max_completion_length=1024, on_overflow="truncate",
                                 backend=backend)

    record_benchmark(benchmark, pack, torch.device("cpu"), tokens=data.useful_tokens, examples=len(data), backend=backend)
