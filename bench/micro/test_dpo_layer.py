"""One DPO step of the head: policy forward+backward plus the reference forward."""

from __future__ import annotations

import pytest
import torch

from fastalign.bench.micro import record_benchmark
from fastalign.bench.providers import DPO_PROVIDERS as PROVIDERS
from fastalign.bench.providers import dpo_training_step


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_dpo_layer(benchmark, device, provider):
    build, needs = PROVIDERS[provider]
    reason = needs(device)
    if reason is not None:
        pytest.skip(reason)
    if provider == "liger" and device.type != "cuda":
        pytest.skip("Liger's chunked DPO loss is a GPU comparison")
    step_fn = build(device)
    pairs, seq, h, v, dtype = (4, 1024, 4096, 128256, torch.bfloat16) if device.type == "cuda" else (2, 128, 128, 8192, torch.float32)
    step = dpo_training_step(step_fn, pairs, seq, h, v, dtype, device)
    record_benchmark(benchmark, step, device, tokens=2 * pairs * seq, pairs=pairs, seq=seq, h=h, v=v,
           dtype=str(dtype).removeprefix("torch."))
