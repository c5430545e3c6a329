"""Backward of the fused linear log-prob op: one logits recompute feeds dH, dW and db.

For row ``n`` with target ``t`` and upstream gradients ``a = dlogp``, ``c = dlse``,
``e = dentropy``, ``u = dzsum``, the gradient w.r.t. the sampled logits is

    g_j = a * [j == t] + u - p_j * (a - c + e * (z_j - (lse - H)))

(``lse - H`` is ``sum_j p_j z_j``); it is then chained through the temperature and the
soft-cap, ``dl = g / T * (1 - tanh^2(l / cap))``, and contracted with W (dH) and h (dW).

The grid is ``(owned blocks, splits)``. With ``OWN_ROWS`` a program owns a block of rows and
sweeps a range of vocab tiles, so its dH rows are touched by no one else when there is one
split (plain read-modify-write) and dW crosses programs (atomics). With ``OWN_ROWS=False``
a program owns a vocab block and sweeps row tiles: dW/db are exclusive. The deterministic
mode runs one launch of each kind with a single split, so no atomics are used at all.
"""

import triton
import triton.language as tl

from .autotune import backward_configs
from .logits_tile import logits_tile, row_block


@triton.jit
def _accumulate(ptr, value, mask, ATOMIC: tl.constexpr):
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask)
    else:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)


@triton.autotune(
    configs=backward_configs(),
    key=["H", "V", "OWN_ROWS"],
    reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"],
)
@triton.jit
def linear_logprob_bwd_kernel(
    h_ptr,
    row_offsets_ptr,
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
    stride_hk,
    stride_wv,
    stride_wk,
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
    offs_k_base = tl.arange(0, BLOCK_K)
    for sweep in range(sweep_begin, sweep_end):
        if OWN_ROWS:
            n_block = pid_own
            v_block = sweep
        else:
            n_block = sweep
            v_block = pid_own
        offs_n, mask_n, targets, active, row_offsets = row_block(
            targets_ptr, row_offsets_ptr, n_block, N, ignore_index, BLOCK_N
        )
        if tl.max(active.to(tl.int32), axis=0) > 0:
            offs_v = v_block * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
            mask_v = offs_v < V
            z = logits_tile(
                h_ptr, row_offsets, mask_n, w_ptr, b_ptr, offs_v, mask_v, H,
                stride_hk, stride_wv, stride_wk, softcap, inv_temperature,
                HAS_BIAS, HAS_SOFTCAP, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_K,
            )
            valid = active[:, None] & mask_v[None, :]
            lse = tl.load(lse_ptr + offs_n, mask=active, other=0.0)
            prob = tl.where(valid, tl.exp(z - lse[:, None]), 0.0)
            coef = tl.zeros((BLOCK_N,), dtype=tl.float32)
            if HAS_DLOGP:
                dlogp = tl.load(dlogp_ptr + offs_n, mask=active, other=0.0)
                coef += dlogp
            if HAS_DLSE:
                coef -= tl.load(dlse_ptr + offs_n, mask=active, other=0.0)
            grad = -prob * coef[:, None]
            if HAS_DENTROPY:
                dentropy = tl.load(dentropy_ptr + offs_n, mask=active, other=0.0)
                mean_z = lse - tl.load(entropy_ptr + offs_n, mask=active, other=0.0)
                grad -= prob * dentropy[:, None] * (z - mean_z[:, None])
            is_target = (offs_v[None, :] == targets[:, None]) & valid
            if HAS_DLOGP:
                grad += tl.where(is_target, dlogp[:, None], 0.0)
            if HAS_DZSUM:
                grad += tl.load(dzsum_ptr + offs_n, mask=active, other=0.0)[:, None]
            grad = tl.where(valid, grad, 0.0) * inv_temperature
            if HAS_SOFTCAP:
                capped = z / (softcap * inv_temperature)
                grad = grad * (1.0 - capped * capped)
            keep = True
            if FILTER:
                # Skip the two contractions when every probability in the tile is tiny and no
                # target sits in it: its gradient is below what the dtype can represent anyway.
                big = tl.max(tl.max(prob, axis=1), axis=0) >= filter_eps
                hit = tl.max(tl.max(is_target.to(tl.int32), axis=1), axis=0) > 0
                keep = big | hit
            if keep:
                grad_lo = grad.to(h_ptr.dtype.element_ty)
                for k0 in range(0, H, BLOCK_K):
                    k = k0 + offs_k_base
                    mask_k = k < H
                    if COMPUTE_DH:
                        w = tl.load(
                            w_ptr + offs_v[:, None] * stride_wv + k[None, :] * stride_wk,
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
                            h_ptr + row_offsets[:, None] + k[None, :] * stride_hk,
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
