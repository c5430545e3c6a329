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

``cuda`` and ``rss`` also keep a peak per phase of the block (``phase_peaks``): the caller
names the phase it enters with ``mark(name)`` (from hooks, say), and every reading counts for
the phase current when it was taken. A step's peak is the largest of its phases' peaks, and
phases grow at different rates with the sequence length; their own peaks show which one sets
the peak at lengths not measured.

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
    """``peak_bytes``: the CUDA peak of the block (absolute); ``start_bytes``: live at entry;
    ``phase_peaks``: the absolute peak of each phase (``mark``; one phase, ``first_phase``, if
    never marked)."""

    def __init__(self, device: torch.device, first_phase: str = "all") -> None:
        self.device = device
        self.start_bytes = 0
        self.peak_bytes = 0
        self.phase_peaks: dict[str, int] = {}
        self._phase = first_phase

    def __enter__(self) -> CudaPeak:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start_bytes = torch.cuda.memory_allocated(self.device)
        return self

    def _close_phase(self) -> None:
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        self.phase_peaks[self._phase] = max(self.phase_peaks.get(self._phase, 0), peak)
        self.peak_bytes = max(self.peak_bytes, peak)

    def mark(self, phase: str) -> None:
        """From here on, readings count for ``phase`` (synchronizes the device)."""
        self._close_phase()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._phase = phase

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # nothing to read after a failure (an OOM is reported by the caller)
            return
        self._close_phase()

    @property
    def peak_above_start(self) -> int:
        return self.peak_bytes - self.start_bytes


class RSSPeak:
    """``peak_bytes``: the peak RSS above the RSS at entry, sampled every ``interval`` seconds;
    ``phase_peaks``: the same per phase (``mark``; one phase, ``first_phase``, if never marked)."""

    def __init__(self, interval: float = 0.005, first_phase: str = "all") -> None:
        self.interval = interval
        self.peak_bytes = 0
        self.phase_peaks: dict[str, int] = {}
        self._phase = first_phase
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _read(self) -> None:
        with self._lock:
            above = rss_bytes() - self._base
            self.phase_peaks[self._phase] = max(self.phase_peaks.get(self._phase, 0), above)
            self.peak_bytes = max(self.peak_bytes, above)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def mark(self, phase: str) -> None:
        """From here on, readings count for ``phase`` (the RSS now counts for both)."""
        self._read()
        with self._lock:
            self._phase = phase
        self._read()

    def __enter__(self) -> RSSPeak:
        trim_heap()
        self._base = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def memory_meter(device: torch.device, method: str, first_phase: str = "all"):
    """The meter of ``method`` (one of ``MEMORY_METHODS``): a context manager with ``peak_bytes``
    (``cuda`` and ``rss`` also keep ``phase_peaks``, starting in ``first_phase``)."""
    if method == "cuda":
        return CudaPeak(device, first_phase)
    if method == "tensors":
        return AllocationRecorder()
    if method == "rss":
        return RSSPeak(first_phase=first_phase)
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
