"""Checkpointed layer inputs kept in host memory between the forward and the backward.

With activation checkpointing, what a decoder stack keeps for backward is, per layer, the
layer's input ``[T, H]`` (everything inside the layer is recomputed). ``CheckpointOffload`` is
a pair of saved-tensor hooks entered around the backbone's forward: a checkpointed layer saves
its inputs through them (``torch.utils.checkpoint`` saves the inputs of a region outside its
own hooks), while everything saved *inside* a layer goes to the checkpoint's hooks and never
reaches these. So the tensors moved are exactly the layers' inputs plus the few large tensors
the backbone saves outside its layers (the final norm's input).

On CUDA the copies are asynchronous: device → pinned host on a side stream during the forward
(the device memory is handed back to the allocator once the copy is done, via
``record_stream``); in backward, host → device on the side stream, and each layer's fetch
starts the fetch of the layer before it, so the copy overlaps that layer's recompute and
backward. At most one prefetched input is on the device beyond the one in use.

The hooks are device-agnostic (no stream, no pinned memory off CUDA), which is how the tests
run this exact code path on CPU; ``PolicyModel`` itself only offers offloading on CUDA.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

DEFAULT_MIN_BYTES = 1 << 20  # below ~1 MiB a copy costs more in latency than it frees


class _Offloaded:
    """One saved tensor living in host memory; ``device_copy`` once fetched back."""

    __slots__ = ("__weakref__", "copied", "device", "device_copy", "host", "index", "owner", "ready")

    def __init__(self, owner: CheckpointOffload, index: int, host: torch.Tensor, device: torch.device,
                 copied) -> None:
        self.owner, self.index, self.host, self.device = owner, index, host, device
        self.copied = copied  # CUDA event: the device → host copy finished (None off CUDA)
        self.device_copy: torch.Tensor | None = None
        self.ready = None  # CUDA event: the host → device copy finished


class CheckpointOffload:
    """Saved-tensor hooks moving large floating-point saved tensors of ``device`` to the host.

    Args:
        device: the device whose saved tensors are moved (tensors elsewhere are left alone).
        min_bytes: smaller tensors stay where they are.
        pin_memory: page-locked host buffers (needed for asynchronous copies; CUDA only).
        stream: the side stream for the copies (``None``: synchronous copies on the current
            stream; CUDA only).

    Use one instance per forward: ``with offload.hooks(): hidden = backbone(...)``.
    ``moved_bytes`` counts what it moved (for logs and tests).
    """

    def __init__(self, device: torch.device, *, min_bytes: int = DEFAULT_MIN_BYTES, pin_memory: bool = False,
                 stream: torch.cuda.Stream | None = None) -> None:
        if not isinstance(device, torch.device):
            raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise ValueError(f"min_bytes must be an int >= 0, got {min_bytes!r}")
        if (pin_memory or stream is not None) and device.type != "cuda":
            raise ValueError(f"pin_memory and stream need a CUDA device, got device {device}")
        self.device, self.min_bytes, self.pin_memory, self.stream = device, min_bytes, pin_memory, stream
        self.moved_bytes = 0
        self._handles: list[weakref.ReferenceType[_Offloaded]] = []
        # One copy per tensor (the final norm saves its input twice: pow and mul). Keyed by
        # storage and version, confirmed by identity: freed memory is reused by new tensors.
        self._by_tensor: dict[tuple, tuple[weakref.ReferenceType, weakref.ReferenceType[_Offloaded]]] = {}

    def hooks(self) -> contextlib.AbstractContextManager:
        """The ``saved_tensors_hooks`` context to run the forward in."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _moves(self, tensor: torch.Tensor) -> bool:
        if tensor.is_leaf and tensor.requires_grad:
            return False  # a parameter: it stays on the device anyway, a copy would only add memory
        return (tensor.device == self.device and tensor.is_floating_point() and not tensor.is_sparse
                and tensor.numel() * tensor.element_size() >= self.min_bytes)

    def _pack(self, tensor: torch.Tensor):
        if not self._moves(tensor):
            return tensor
        key = (tensor.data_ptr(), tensor._version)
        tensor_ref, handle_ref = self._by_tensor.get(key, (None, None))
        if tensor_ref is not None and tensor_ref() is tensor and handle_ref() is not None:
            return handle_ref()
        host = torch.empty_like(tensor, device="cpu", pin_memory=self.pin_memory)
        copied = None
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the tensor is computed
            with torch.cuda.stream(self.stream):
                host.copy_(tensor, non_blocking=True)
                copied = self.stream.record_event()
            tensor.record_stream(self.stream)  # its memory is reused only after the copy
        else:
            host.copy_(tensor)
        self.moved_bytes += host.numel() * host.element_size()
        handle = _Offloaded(self, len(self._handles), host, tensor.device, copied)
        self._handles.append(weakref.ref(handle))
        self._by_tensor[key] = (weakref.ref(tensor), weakref.ref(handle))
        return handle

    def _fetch(self, handle: _Offloaded) -> None:
        """Start the host → device copy of ``handle`` (asynchronous on the side stream)."""
        if handle.device_copy is not None:
            return
        if self.stream is None:
            handle.device_copy = handle.host.to(handle.device, copy=True)
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(handle.copied)  # same stream already, but explicit about the order
            handle.device_copy = handle.host.to(handle.device, non_blocking=True)
            handle.ready = self.stream.record_event()

    def _previous(self, index: int) -> _Offloaded | None:
        """The nearest earlier handle the graph still holds: the next one backward will need."""
        for position in range(index - 1, -1, -1):
            handle = self._handles[position]()
            if handle is not None:
                return handle
        return None

    def _unpack(self, handle):
        if not isinstance(handle, _Offloaded):
            return handle
        self._fetch(handle)
        tensor, handle.device_copy = handle.device_copy, None  # a second unpack fetches again
        if handle.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(handle.ready)
            tensor.record_stream(current)  # allocated on the side stream, used and freed on this one
        previous = self._previous(handle.index)
        if previous is not None:
            self._fetch(previous)  # overlaps with this layer's recompute and backward
        return tensor
