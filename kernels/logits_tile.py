"""Building blocks shared by every kernel: tile scheduling, row addressing, the logits tile.

- ``grouped_tile``: maps a 1-D program id to a (row block, vocab block) pair in grouped order,
  so the programs running at the same time share a few hidden blocks and a few weight blocks
  and both stay in L2 (the ordering of the Triton matmul tutorial).
- ``hidden_row_offsets``: element offsets of hidden rows from at most two leading strides
  (``hidden[B, T, H]`` and any view of it, e.g. ``hidden[:, :-1]``), computed in registers,
  with an alignment promise the compiler turns into 16-byte asynchronous copies.
- ``logits_tile``: the fp32 ``[BLOCK_N, BLOCK_V]`` tile of ``z = cap(h W^T + b) / T``.
- ``tanh``: accurate to about one fp32 ulp (libdevice's tanh is unavailable to the
  interpreter, and ``1 - 2 / (e^{2x} + 1)`` alone loses all relative accuracy near 0, which
  biases sums of soft-capped logits).

See ``docs/kernels.md`` for the math and the launch plans (``plans.py``).
"""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    ax = tl.abs(x)
    x2 = x * x
    # x + x^3 P(x^2): least-squares fit of (tanh(x) - x) / x^3 on [0, 0.625]; < 1 ulp there.
    poly = -0.0061542582944569355
    poly = poly * x2 + 0.021044891931077517
    poly = poly * x2 - 0.05386369529355684
    poly = poly * x2 + 0.13332888397464598
    poly = poly * x2 - 0.3333333134768825
    small = x + x * x2 * poly
    # Saturated to 1 in fp32 long before the clamp (e^80 is finite; 2 / e^80 ~ 4e-35).
    large = 1.0 - 2.0 / (tl.exp(tl.minimum(2.0 * ax, 80.0)) + 1.0)
    large = tl.where(x < 0, -large, large)
    return tl.where(ax < 0.625, small, large)


@triton.jit
def grouped_tile(pid, num_row_blocks, num_col_blocks, GROUP_N: tl.constexpr):
    """``(row block, column block)`` of program ``pid``: columns sweep inside groups of rows."""
    programs_per_group = GROUP_N * num_col_blocks
    group = pid // programs_per_group
    first_row_block = group * GROUP_N
    group_rows = tl.minimum(num_row_blocks - first_row_block, GROUP_N)
    in_group = pid % programs_per_group
    return first_row_block + in_group % group_rows, in_group // group_rows


@triton.jit
def hidden_row_offsets(rows, n_rows, rows_inner, stride_outer, stride_inner, ROW_ALIGN: tl.constexpr):
    """int64 element offsets of flat rows ``rows`` of a ``[outer, inner, H]`` hidden view;
    rows past ``n_rows`` read row 0 (always valid) so that loads need no mask.

    ``ROW_ALIGN`` (elements) is the launcher's promise that every row starts 16 bytes
    aligned; it is what lets the compiler use vectorized asynchronous copies.
    """
    rows = tl.where(rows < n_rows, rows, 0)
    outer = (rows // rows_inner).to(tl.int64)
    inner = (rows % rows_inner).to(tl.int64)
    offsets = outer * stride_outer + inner * stride_inner
    if ROW_ALIGN > 1:
        offsets = tl.multiple_of(offsets, ROW_ALIGN)
    return offsets


@triton.jit
def logits_tile(
    h_ptr,
    row_offsets,  # [BLOCK_N] int64 element offsets of the hidden rows (rows past N: any valid row)
    w_ptr,
    b_ptr,
    offs_v,  # [BLOCK_V] int64 vocab ids of this tile
    mask_v,  # [BLOCK_V] vocab ids < V
    H,
    stride_wv,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Return the fp32 ``[BLOCK_N, BLOCK_V]`` tile of sampled logits ``z``.

    Hidden and weight rows are contiguous along H (the launchers guarantee it). The loads
    carry no row or vocab mask: callers point rows past N at a valid row and the weight rows
    of vocab ids past V are clamped to V - 1, so the loop holds nothing but two pipelined
    copies and a dot (masks cost registers the epilogue needs). Columns past V and rows
    past N hold garbage for the caller to mask; with ``EVEN_K`` (H a multiple of every
    BLOCK_K) there is no mask along K either.
    """
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = tl.where(mask_v, offs_v, 0)
    h_ptrs = h_ptr + row_offsets[:, None] + offs_k[None, :]
    # W is read as a [BLOCK_K, BLOCK_V] tile (K contiguous) so the dot needs no transpose.
    w_ptrs = w_ptr + offs_k[:, None] + w_rows[None, :] * stride_wv
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            h = tl.load(h_ptrs)
            w_t = tl.load(w_ptrs)
        else:
            mask_k = offs_k < H - k0
            h = tl.load(h_ptrs, mask=mask_k[None, :], other=0.0)
            w_t = tl.load(w_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(h, w_t, acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        # A -inf bias (a masked vocabulary entry) becomes a finite "minus infinity", so its
        # probability is exactly 0 and 0 * logit stays 0 in the entropy terms.
        bias = tl.maximum(tl.load(b_ptr + w_rows).to(tl.float32), -3.0e38)
        acc += bias[None, :]
    if HAS_SOFTCAP:
        acc = softcap * tanh(acc / softcap)
    return acc * inv_temperature
