"""Row-block prologue and the recompute of one tile of logits ``z = cap(h @ W^T + b) / T``."""

import triton
import triton.language as tl


@triton.jit
def tanh_via_exp(x):
    # libdevice.tanh is not available under TRITON_INTERPRET; this form saturates cleanly
    # at +-1 for large |x| (exp overflows to inf, 2 / inf == 0).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def row_block(targets_ptr, row_offsets_ptr, block, N, ignore_index, BLOCK_N: tl.constexpr):
    """Rows of block ``block``: ids, in-range mask, targets (int64), scored mask, hidden offsets."""
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    targets = tl.load(targets_ptr + offs_n, mask=mask_n, other=ignore_index).to(tl.int64)
    active = mask_n & (targets != ignore_index)
    row_offsets = tl.load(row_offsets_ptr + offs_n, mask=mask_n, other=0)
    return offs_n, mask_n, targets, active, row_offsets


@triton.jit
def logits_tile(
    h_ptr,
    row_offsets,  # [BLOCK_N] int64 element offsets of the hidden rows
    mask_n,  # [BLOCK_N] rows that exist
    w_ptr,
    b_ptr,
    offs_v,  # [BLOCK_V] int64 vocab ids of this tile
    mask_v,  # [BLOCK_V] vocab ids < V
    H,
    stride_hk,
    stride_wv,
    stride_wk,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Return the fp32 ``[BLOCK_N, BLOCK_V]`` tile of sampled logits ``z``.

    Out-of-range rows read zeros; out-of-range vocab columns are left for the caller to mask.
    """
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < H
        h = tl.load(
            h_ptr + row_offsets[:, None] + k[None, :] * stride_hk,
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
        )
        # W is read as a [BLOCK_K, BLOCK_V] tile so the dot needs no transpose.
        w_t = tl.load(
            w_ptr + k[:, None] * stride_wk + offs_v[None, :] * stride_wv,
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        acc = tl.dot(h, w_t, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_v, mask=mask_v, other=0.0).to(tl.float32)
        acc += bias[None, :]
    if HAS_SOFTCAP:
        acc = softcap * tanh_via_exp(acc / softcap)
    return acc * inv_temperature
