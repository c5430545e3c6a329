"""Minimum-memory backward: one logits recompute feeds dH, dW and db inside one kernel.

Used when the memory budget cannot hold one chunk of the logits gradient (see
``linear_logprob_bwd.py`` for the default). Nothing of size ``rows x V`` exists; the price is
fp32 read-modify-write traffic on dH and dW, which the default path does not pay.

The grid is ``(owned blocks, splits)``. With ``OWN_ROWS`` a program owns a block of rows and
sweeps a range of vocab tiles, so its dH rows are touched by no one else when there is one
split (plain read-modify-write) and dW crosses programs (relaxed atomics: only the final sum
matters, no ordering, so no memory fences). With ``OWN_ROWS=False`` a program owns a vocab
block and sweeps row tiles: dW/db are exclusive. The deterministic mode runs one launch of
each kind with a single split, so no atomics are used at all.
"""

import triton
import triton.language as tl

from .autotune import fused_backward_configs, prune_fused_backward_for_device
from .logits_grad import logits_grad_tile
from .logits_tile import hidden_row_offsets, logits_tile


@triton.jit
def _accumulate(ptr, value, mask, ATOMIC: tl.constexpr):
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)


@triton.autotune(
    configs=fused_backward_configs(),
    key=["H", "V", "n_bucket", "OWN_ROWS"],
    # Every trial accumulates into the outputs: they must start from zero each time.
    reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"],
    prune_configs_by={"early_config_prune": prune_fused_backward_for_device},
)
@triton.jit
def linear_logprob_bwd_fused_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    targets_ptr,
    lse_ptr,
    entropy_ptr,
    dlogp_ptr,
    dlse_ptr,
    dentropy_ptr,
    dzsum_ptr,
    dh_ptr,  # [N, H] fp32, contiguous
    dw_ptr,  # [V, H] fp32, contiguous
    db_ptr,  # [V] fp32
    N,
    V,
    H,
    n_bucket,  # autotune key only
    rows_inner,
    stride_outer,
    stride_inner,
    stride_wv,
    ignore_index,
    softcap,
    inv_temperature,
    filter_eps,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_DLOGP: tl.constexpr,
    HAS_DLSE: tl.constexpr,
    HAS_DENTROPY: tl.constexpr,
    HAS_DZSUM: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    DH_ATOMIC: tl.constexpr,
    DW_ATOMIC: tl.constexpr,
    OWN_ROWS: tl.constexpr,
    FILTER: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_own = tl.program_id(0)
    pid_split = tl.program_id(1)
    # Derived here rather than passed in so the grid can follow the autotuned block sizes.
    if OWN_ROWS:
        num_swept_tiles = tl.cdiv(V, BLOCK_V)
    else:
        num_swept_tiles = tl.cdiv(N, BLOCK_N)
    tiles_per_split = tl.cdiv(num_swept_tiles, tl.num_programs(1))
    sweep_begin = pid_split * tiles_per_split
    sweep_end = tl.minimum(sweep_begin + tiles_per_split, num_swept_tiles)
    offs_k = tl.arange(0, BLOCK_K)
    for sweep in range(sweep_begin, sweep_end):
        if OWN_ROWS:
            n_block = pid_own
            v_block = sweep
        else:
            n_block = sweep
            v_block = pid_own
        offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        targets = tl.load(targets_ptr + offs_n, mask=mask_n, other=ignore_index).to(tl.int64)
        active = mask_n & (targets != ignore_index)
        if tl.max(active.to(tl.int32), axis=0) > 0:
            row_offsets = hidden_row_offsets(offs_n, N, rows_inner, stride_outer, stride_inner, ROW_ALIGN)
            offs_v = v_block * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
            mask_v = offs_v < V
            z = logits_tile(
                h_ptr, row_offsets, w_ptr, b_ptr, offs_v, mask_v, H, stride_wv,
                softcap, inv_temperature, HAS_BIAS, HAS_SOFTCAP, EVEN_K, DOT_PRECISION,
                BLOCK_N, BLOCK_V, BLOCK_K,
            )
            grad = logits_grad_tile(
                z, offs_n, active, targets, offs_v, mask_v, lse_ptr, entropy_ptr,
                dlogp_ptr, dlse_ptr, dentropy_ptr, dzsum_ptr, softcap, inv_temperature,
                HAS_SOFTCAP, HAS_DLOGP, HAS_DLSE, HAS_DENTROPY, HAS_DZSUM,
            )
            keep = True
            if FILTER:
                # Skip the two contractions when every gradient entry in the tile is tiny
                # and no target sits in it: it is below what the dtype can represent anyway.
                big = tl.max(tl.max(tl.abs(grad), axis=1), axis=0) >= filter_eps
                hit = tl.max(tl.max(((offs_v[None, :] == targets[:, None]) & active[:, None]).to(tl.int32), axis=1), axis=0) > 0
                keep = big | hit
            if keep:
                grad_lo = grad.to(h_ptr.dtype.element_ty)
                for k0 in range(0, H, BLOCK_K):
                    k = k0 + offs_k
                    mask_k = k < H
                    if COMPUTE_DH:
                        w = tl.load(
                            w_ptr + offs_v[:, None] * stride_wv + k[None, :],
                            mask=mask_v[:, None] & mask_k[None, :],
                            other=0.0,
                        )
                        dh_part = tl.dot(grad_lo, w, input_precision=DOT_PRECISION)
                        _accumulate(
                            dh_ptr + offs_n[:, None].to(tl.int64) * H + k[None, :],
                            dh_part,
                            mask_n[:, None] & mask_k[None, :],
                            DH_ATOMIC,
                        )
                    if COMPUTE_DW:
                        h = tl.load(
                            h_ptr + row_offsets[:, None] + k[None, :],
                            mask=mask_n[:, None] & mask_k[None, :],
                            other=0.0,
                        )
                        dw_part = tl.dot(tl.trans(grad_lo), h, input_precision=DOT_PRECISION)
                        _accumulate(
                            dw_ptr + offs_v[:, None] * H + k[None, :],
                            dw_part,
                            mask_v[:, None] & mask_k[None, :],
                            DW_ATOMIC,
                        )
                if COMPUTE_DB:
                    _accumulate(db_ptr + offs_v, tl.sum(grad, axis=0), mask_v, DW_ATOMIC)
