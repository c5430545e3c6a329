"""Timing (median and spread) of a callable, on CUDA or CPU, and the out-of-memory test.

Memory is measured by ``fastalign.bench.memory``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    # CPU only: median process CPU time of a run. On a shared machine other processes stretch
    # wall time far more than the process's own CPU time, so ratios of it compare better.
    cpu_median_ms: float | None = None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def time_callable(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
    else:
        cpu_samples = []
        for _ in range(repeats):
            begin, cpu_begin = time.perf_counter(), time.process_time()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
            cpu_samples.append((time.process_time() - cpu_begin) * 1e3)
        return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8),
                      repeats, statistics.median(cpu_samples))
    return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), repeats)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA OOM or any error that says so: benchmarks record it as a result."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
