"""Helpers of the pytest-benchmark microbenchmarks in ``bench/micro``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastalign.bench.memory import peak_memory_bytes


def record_benchmark(benchmark, fn: Callable[[], object], device: torch.device, *, tokens: int,
                     rounds: int = 3, **info) -> None:
    """Time ``fn`` with pytest-benchmark (``rounds`` rounds after one warmup, CUDA synchronized)
    and fill ``benchmark.extra_info`` with ``info``, tokens, tokens/s, peak memory above the
    inputs and the device."""
    def synced():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(synced, rounds=rounds, warmup_rounds=1, iterations=1)
    # None under --benchmark-disable (the step ran once, untimed): no rate then.
    mean_s = benchmark.stats.stats.mean if benchmark.stats is not None else None
    benchmark.extra_info.update(info)
    benchmark.extra_info["tokens"] = tokens
    benchmark.extra_info["tokens_per_s"] = tokens / mean_s if mean_s else None
    benchmark.extra_info["peak_memory_mib"] = peak_memory_bytes(synced, device) / 2**20
    benchmark.extra_info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
