"""The op, forward (no grad: a reference model) and forward+backward, per implementation."""

from __future__ import annotations

import pytest
import torch

from fastalign.bench.micro import record_benchmark
from fastalign.bench.providers import PROVIDERS

IMPLS = ["naive", "chunked_torch", "fastalign", "fastalign_fused", "liger", "cut_cross_entropy"]


def _shape(device):
    return (4096, 4096, 128256, torch.bfloat16) if device.type == "cuda" else (512, 128, 16384, torch.float32)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_logprobs(benchmark, device, impl, mode):
    provider = PROVIDERS[impl]
    reason = provider.needs(device)
    if reason is not None:
        pytest.skip(reason)
    fn = provider.build()
    n, h, v, dtype = _shape(device)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype).requires_grad_(mode != "forward")
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype).requires_grad_(mode != "forward")
    targets = torch.randint(0, v, (n,), generator=gen).to(device)

    def step():
        if mode == "forward":
            with torch.no_grad():
                fn(hidden, weight, targets)
        else:
            hidden.grad = weight.grad = None
            fn(hidden, weight, targets).sum().backward()

    record_benchmark(benchmark, step, device, tokens=n, n=n, h=h, v=v, dtype=str(dtype).removeprefix("torch."))
