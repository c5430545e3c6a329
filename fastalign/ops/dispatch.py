"""Which implementation serves a call: ``impl="auto" | "torch" | "triton"``.

Resolved per call from the tensors' device (never by swapping functions at import time).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from fastalign.kernels.interpret import interpreting

IMPLS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_importable() -> bool:
    """True when the ``triton`` package can be imported (it is Linux-only)."""
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of ``device`` in this process."""
    if not triton_importable():
        return False
    if device.type == "cuda":
        return True
    # TRITON_INTERPRET=1 runs kernels on CPU tensors; the check lives in fastalign.kernels.interpret
    # (no triton import there, so it is safe to ask where Triton is missing).
    return device.type == "cpu" and interpreting()


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype) -> str:
    """Map ``impl`` to ``"torch"`` or ``"triton"``; raise ``ValueError`` if impossible.

    ``auto`` picks Triton for CUDA tensors of a Triton dtype and the chunked PyTorch path
    everywhere else (CPU, float64, no Triton installed).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    triton_ok = device.type == "cuda" and triton_importable() and dtype in TRITON_DTYPES
    if impl == "auto":
        return "triton" if triton_ok else "torch"
    if not triton_runs_on(device):
        raise ValueError(
            f"impl='triton' needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 "
            f"for CPU tensors); got tensors on {device}, triton importable: {triton_importable()}"
        )
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"impl='triton' supports {TRITON_DTYPES}; hidden has dtype {dtype}")
    return "triton"
