"""The one memory meter of the benchmarks.

Three measurements, one interface (a context manager with ``peak_bytes`` after exit):

* ``"cuda"`` — ``torch.cuda.max_memory_allocated`` after a reset at entry: everything resident
  on the GPU during the block (weights included); ``start_bytes`` is what was live at entry.
* ``"rss"`` — the peak resident-set size sampled every few ms by a thread, minus the RSS at
  entry (cheap; undercounts memory the allocator reuses from earlier work, so the heap is
  trimmed at entry).
* ``"tensors"`` — the peak bytes of live tensors allocated in the block, recorded by
  ``fastalign.testing.memory.AllocationRecorder`` (exact, but its Python dispatch hook slows
  the block, ~40% on the tiny model, which then skews timings).

``peak_memory_bytes(fn, device)`` measures one call: CUDA above what was live before, else
the tensor recorder. The process RSS readings come from ``fastalign.testing.memory``, which the
trainers' per-step log uses too (the library never imports this harness).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

import torch

from fastalign.testing.memory import AllocationRecorder, rss_bytes

MEMORY_METHODS = ("cuda", "rss", "tensors")


def trim_heap() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc), so that an RSS delta
    is not hidden by memory that earlier work freed but the allocator kept."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CudaPeak:
    """``peak_bytes``: the CUDA peak of the block (absolute); ``start_bytes``: live at entry."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0
        self.peak_bytes = 0

    def __enter__(self) -> CudaPeak:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start_bytes = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # nothing to read after a failure (an OOM is reported by the caller)
            return
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    @property
    def peak_above_start(self) -> int:
        return self.peak_bytes - self.start_bytes


class RSSPeak:
    """``peak_bytes``: the peak RSS above the RSS at entry, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_bytes())

    def __enter__(self) -> RSSPeak:
        trim_heap()
        self._base = self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        self.peak_bytes = self._peak - self._base


def memory_meter(device: torch.device, method: str):
    """The meter of ``method`` (one of ``MEMORY_METHODS``): a context manager with ``peak_bytes``."""
    if method == "cuda":
        return CudaPeak(device)
    if method == "tensors":
        return AllocationRecorder()
    if method == "rss":
        return RSSPeak()
    raise ValueError(f"memory method must be one of {MEMORY_METHODS}, got {method!r}")


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one run of ``fn`` above what was live before it: on CUDA the
    allocator's peak, elsewhere the live tensors (RSS is too coarse for one call)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        with CudaPeak(device) as meter:
            fn()
        return meter.peak_above_start
    with memory_meter(device, "tensors") as recorder:
        fn()
    return recorder.peak_bytes
