"""Matrix products with fp32 accumulation *and* an fp32 result, for the chunked backward.

cuBLAS accumulates half-precision GEMMs in fp32 but may reduce split-K partial sums in the
input dtype (PyTorch allows it by default), and its result is rounded to the input dtype;
summing several chunks' ``dW`` in bf16 would round once per chunk. These helpers keep every
sum in fp32 and round once, at the end:

- CUDA with ``torch.mm(..., out_dtype=torch.float32)`` (recent PyTorch): one cuBLAS call
  that writes fp32.
- CUDA without it: the product in slices of rows, each slice's half-precision result added to
  the fp32 accumulator (one rounding per slice and chunk, bounded temporary memory).
- CPU (the interpreter's tests): operands upcast to fp32.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# Rows of the output written per slice by the fallback (bounds its temporary to ~128 MiB at H=4096).
_FALLBACK_SLICE_ROWS = 16384


@functools.cache
def _cuda_out_dtype_supported() -> bool:
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device="cuda")
        acc = torch.zeros(16, 16, dtype=torch.float32, device="cuda")
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        ok = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        return ok and bool((acc == 16).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def matmul_fp32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` (``[m, k] @ [k, n]``, same dtype) as an fp32 (float64 for float64) tensor."""
    acc = _accumulation_dtype(a.dtype)
    if a.dtype == acc:
        return torch.mm(a, b)
    if a.is_cuda and _cuda_out_dtype_supported():
        return torch.mm(a, b, out_dtype=acc)
    if a.is_cuda:
        return torch.mm(a, b).to(acc)
    return torch.mm(a.to(acc), b.to(acc))


def addmm_fp32_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``acc += a @ b`` in place; ``acc`` is fp32 (or float64), ``a``/``b`` any float dtype."""
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    if a.is_cuda and _cuda_out_dtype_supported():
        return torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    if a.is_cuda:
        for start in range(0, a.shape[0], _FALLBACK_SLICE_ROWS):
            rows = slice(start, start + _FALLBACK_SLICE_ROWS)
            acc[rows] += torch.mm(a[rows], b)
        return acc
    return acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))
