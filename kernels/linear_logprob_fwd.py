"""Forward of the fused linear log-prob op: per-row statistics without ``[N, V]`` logits.

``linear_logprob_fwd_kernel`` runs on a ``(row blocks, vocab splits)`` grid. Each program
sweeps its vocab range tile by tile and keeps, per row, an online maximum ``m``, the scaled
sum ``s = sum exp(z - m)``, the scaled first moment ``t = sum exp(z - m) * (z - m)`` (entropy),
the plain logit sum (label smoothing, mean logits) and the target logit. Keeping ``t``
relative to ``m`` avoids the cancellation of ``lse - sum(p * z)`` when logits are ~1e4.

``linear_logprob_combine_kernel`` merges the splits exactly (moments are rescaled to the
global maximum, never averaged) and writes log-prob, entropy, lse and logit sum per row.
"""

import triton
import triton.language as tl

from .autotune import forward_configs
from .logits_tile import logits_tile, row_block

# A finite "minus infinity" keeps (m_old - m_new) * s_old == 0 on the first tile instead of NaN.
_NEG_BIG = -3.0e38


@triton.autotune(configs=forward_configs(), key=["H", "V"])
@triton.jit
def linear_logprob_fwd_kernel(
    h_ptr,
    row_offsets_ptr,
    w_ptr,
    b_ptr,
    targets_ptr,
    part_max_ptr,  # [splits, N] fp32
    part_sum_ptr,  # [splits, N] fp32
    part_moment_ptr,  # [splits, N] fp32 (only with WITH_ENTROPY)
    part_zsum_ptr,  # [splits, N] fp32 (only with WITH_ZSUM)
    target_logit_ptr,  # [N] fp32, written by the split that holds the target
    N,
    V,
    H,
    v_per_split,
    stride_hk,
    stride_wv,
    stride_wk,
    ignore_index,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    WITH_ZSUM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_split = tl.program_id(1)
    offs_n, mask_n, targets, active, row_offsets = row_block(
        targets_ptr, row_offsets_ptr, pid_n, N, ignore_index, BLOCK_N
    )
    # Row blocks with nothing to score (prompt tokens, padding) cost two loads and exit.
    if tl.max(active.to(tl.int32), axis=0) > 0:
        v_begin = pid_split * v_per_split
        v_end = tl.minimum(v_begin + v_per_split, V)
        run_max = tl.full((BLOCK_N,), _NEG_BIG, dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_moment = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_zsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for v0 in range(v_begin, v_end, BLOCK_V):
            offs_v = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
            mask_v = offs_v < v_end
            z = logits_tile(
                h_ptr, row_offsets, mask_n, w_ptr, b_ptr, offs_v, mask_v, H,
                stride_hk, stride_wv, stride_wk, softcap, inv_temperature,
                HAS_BIAS, HAS_SOFTCAP, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_K,
            )
            z = tl.where(mask_v[None, :], z, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z, axis=1))
            shift = run_max - new_max
            alpha = tl.exp(shift)
            exp_z = tl.exp(z - new_max[:, None])
            if WITH_ENTROPY:
                centered = tl.where(mask_v[None, :], z - new_max[:, None], 0.0)
                run_moment = alpha * (run_moment + shift * run_sum) + tl.sum(exp_z * centered, axis=1)
            run_sum = alpha * run_sum + tl.sum(exp_z, axis=1)
            run_max = new_max
            if WITH_ZSUM:
                run_zsum += tl.sum(tl.where(mask_v[None, :], z, 0.0), axis=1)
            is_target = offs_v[None, :] == targets[:, None]
            target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        part = pid_split * N + offs_n
        tl.store(part_max_ptr + part, run_max, mask=mask_n)
        tl.store(part_sum_ptr + part, run_sum, mask=mask_n)
        if WITH_ENTROPY:
            tl.store(part_moment_ptr + part, run_moment, mask=mask_n)
        if WITH_ZSUM:
            tl.store(part_zsum_ptr + part, run_zsum, mask=mask_n)
        holds_target = active & (targets >= v_begin) & (targets < v_end)
        tl.store(target_logit_ptr + offs_n, target_logit, mask=holds_target)


@triton.jit
def linear_logprob_combine_kernel(
    targets_ptr,
    part_max_ptr,
    part_sum_ptr,
    part_moment_ptr,
    part_zsum_ptr,
    target_logit_ptr,
    logprob_ptr,  # [N] fp32 out
    entropy_ptr,  # [N] fp32 out (WITH_ENTROPY)
    lse_ptr,  # [N] fp32 out (SAVE_LSE)
    zsum_ptr,  # [N] fp32 out (WITH_ZSUM)
    N,
    num_splits,
    ignore_index,
    WITH_ENTROPY: tl.constexpr,
    WITH_ZSUM: tl.constexpr,
    SAVE_LSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    targets = tl.load(targets_ptr + offs, mask=mask, other=ignore_index)
    active = mask & (targets != ignore_index)
    # Partials of inactive rows were never written: read them only where active.
    glob_max = tl.full((BLOCK,), _NEG_BIG, dtype=tl.float32)
    for k in range(0, num_splits):
        m_k = tl.load(part_max_ptr + k * N + offs, mask=active, other=_NEG_BIG)
        glob_max = tl.maximum(glob_max, m_k)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    moment = tl.zeros((BLOCK,), dtype=tl.float32)
    zsum = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, num_splits):
        m_k = tl.load(part_max_ptr + k * N + offs, mask=active, other=_NEG_BIG)
        s_k = tl.load(part_sum_ptr + k * N + offs, mask=active, other=0.0)
        shift = m_k - glob_max
        scale = tl.exp(shift)
        total += scale * s_k
        if WITH_ENTROPY:
            t_k = tl.load(part_moment_ptr + k * N + offs, mask=active, other=0.0)
            moment += scale * (t_k + shift * s_k)
        if WITH_ZSUM:
            zsum += tl.load(part_zsum_ptr + k * N + offs, mask=active, other=0.0)
    total = tl.where(active, total, 1.0)
    log_total = tl.log(total)
    lse = glob_max + log_total
    target_logit = tl.load(target_logit_ptr + offs, mask=active, other=0.0)
    tl.store(logprob_ptr + offs, tl.where(active, target_logit - lse, 0.0), mask=mask)
    if SAVE_LSE:
        tl.store(lse_ptr + offs, tl.where(active, lse, 0.0), mask=mask)
    if WITH_ENTROPY:
        entropy = log_total - moment / total
        tl.store(entropy_ptr + offs, tl.where(active, entropy, 0.0), mask=mask)
    if WITH_ZSUM:
        tl.store(zsum_ptr + offs, tl.where(active, zsum, 0.0), mask=mask)
