"""Memory probes: allocation recording with a ``TorchDispatchMode`` (``tracemalloc`` cannot see
tensors), and the process's resident-set size now and at its peak.

Records every tensor that an ATen op allocates while the mode is active (outputs that alias
an input, such as views and in-place results, are not allocations): the largest one (in
elements) and the peak of live bytes, tracked per storage with weak references, so views do
not count twice and freed temporaries stop counting.
"""

from __future__ import annotations

import os
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationRecorder(TorchDispatchMode):
    """Context manager: ``largest_numel``, ``largest_op``, ``peak_bytes`` of live tensors.

    With ``record_shapes=True`` it also keeps ``shapes``: (op, shape) of every output.

    Only tensors created inside the context count (inputs made before it do not). Ops of
    fastalign's own custom ops are re-entered so their internal allocations are seen too.
    """

    def __init__(self, *, record_shapes: bool = False) -> None:
        super().__init__()
        self.record_shapes = record_shapes
        self.shapes: list[tuple[str, tuple[int, ...]]] = []
        self.largest_numel = 0
        self.largest_op = ""
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storage_refs: dict[int, int] = {}
        self._storage_bytes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._storage_refs[key] -= 1
        if self._storage_refs[key] == 0:
            del self._storage_refs[key]
            self.live_bytes -= self._storage_bytes.pop(key)

    def _track(self, tensor: torch.Tensor, op_name: str) -> None:
        if self.record_shapes:
            self.shapes.append((op_name, tuple(tensor.shape)))
        if tensor.numel() > self.largest_numel:
            self.largest_numel = tensor.numel()
            self.largest_op = op_name
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key not in self._storage_refs:
            self._storage_refs[key] = 0
            self._storage_bytes[key] = storage.nbytes()
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._storage_refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastalign":
            # A custom op's Python body would run with this mode popped: push the mode back and
            # call the op's backend kernel directly, so the temporaries inside are recorded.
            device = next(t.device for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor))
            backend = torch._C.DispatchKey.CUDA if device.type == "cuda" else torch._C.DispatchKey.CPU
            with self:
                out = func.redispatch(torch._C.DispatchKeySet(backend), *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        # Views and in-place results share an input's storage: they allocate nothing.
        input_storages = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and item.untyped_storage().data_ptr() not in input_storages:
                self._track(item, str(func))
        return out


def rss_bytes() -> int:
    """The resident-set size of this process now (``/proc``; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return process_peak_rss_bytes()


def process_peak_rss_bytes() -> int:
    """The largest resident-set size this process has had (it never goes down)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB
