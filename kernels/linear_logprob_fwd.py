"""Forward of the fused linear log-prob op: per-row statistics without ``[N, V]`` logits.

``linear_logprob_fwd_kernel`` runs on a 1-D grid of (row block, vocab chunk) programs in
grouped order. Each program sweeps the vocab tiles of its chunk and keeps, per row, an online
maximum ``m``, the scaled sum ``s = sum exp(z - m)``, the scaled first moment
``t = sum exp(z - m) * (z - m)`` (entropy), the plain logit sum (label smoothing, mean
logits; compensated) and the target logit. Keeping ``t`` relative to ``m`` avoids the
cancellation of ``lse - sum(p * z)`` when logits are ~1e4.

``linear_logprob_combine_kernel`` merges the chunks exactly (moments are rescaled to the
global maximum, never averaged) and writes log-prob, entropy, lse and logit sum per row.
"""

import triton
import triton.language as tl

from .autotune import forward_configs, prune_forward_for_device
from .logits_tile import grouped_tile, hidden_row_offsets, logits_tile

# A finite "minus infinity" keeps (m_old - m_new) * s_old == 0 on the first tile instead of
# NaN. Kernels may read only constexpr globals.
NEG_BIG = tl.constexpr(-3.0e38)


@triton.jit
def _kahan_add(total, compensation, value):
    """Compensated running sum: returns the new ``(total, compensation)``."""
    y = value - compensation
    t = total + y
    return t, (t - total) - y


@triton.autotune(
    configs=forward_configs(),
    key=["H", "V", "n_bucket", "HAS_SOFTCAP", "WITH_ENTROPY"],
    prune_configs_by={"early_config_prune": prune_forward_for_device},
)
@triton.jit
def linear_logprob_fwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    targets_ptr,
    part_max_ptr,  # [chunks, N] fp32
    part_sum_ptr,  # [chunks, N] fp32
    part_moment_ptr,  # [chunks, N] fp32 (only with WITH_ENTROPY)
    part_zsum_ptr,  # [chunks, N] fp32 (only with WITH_ZSUM)
    target_logit_ptr,  # [N] fp32, written by the chunk that holds the target
    N,
    V,
    H,
    n_bucket,  # autotune key only: N rounded to a power of two
    num_chunks,
    v_per_chunk,
    rows_inner,
    stride_outer,
    stride_inner,
    stride_wv,
    ignore_index,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    WITH_ZSUM: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    pid_n, pid_chunk = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), num_chunks, GROUP_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    targets = tl.load(targets_ptr + offs_n, mask=mask_n, other=ignore_index).to(tl.int64)
    active = mask_n & (targets != ignore_index)
    # Row blocks with nothing to score (prompt tokens, padding) cost one load and exit.
    if tl.max(active.to(tl.int32), axis=0) > 0:
        row_offsets = hidden_row_offsets(offs_n, N, rows_inner, stride_outer, stride_inner, ROW_ALIGN)
        v_begin = pid_chunk * v_per_chunk
        v_end = tl.minimum(v_begin + v_per_chunk, V)
        run_max = tl.full((BLOCK_N,), NEG_BIG, dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_moment = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_zsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        zsum_err = tl.zeros((BLOCK_N,), dtype=tl.float32)
        target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for v0 in range(v_begin, v_end, BLOCK_V):
            offs_v = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
            mask_v = offs_v < v_end
            z = logits_tile(
                h_ptr, row_offsets, w_ptr, b_ptr, offs_v, mask_v, H, stride_wv,
                softcap, inv_temperature, HAS_BIAS, HAS_SOFTCAP, EVEN_K, DOT_PRECISION,
                BLOCK_N, BLOCK_V, BLOCK_K,
            )
            # Every use of z comes before the exponentials so that at most two tiles are live
            # (register pressure is what limits the tile size). Columns past the chunk hold a
            # finite "minus infinity": exp gives 0 and 0 * (NEG_BIG - m) stays finite.
            if WITH_ZSUM:
                tile_sum = tl.sum(tl.where(mask_v[None, :], z, 0.0), axis=1)
                run_zsum, zsum_err = _kahan_add(run_zsum, zsum_err, tile_sum)
            target_col = (targets - v0).to(tl.int32)
            is_target = tl.arange(0, BLOCK_V)[None, :] == target_col[:, None]
            target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)
            z = tl.where(mask_v[None, :], z, NEG_BIG)
            new_max = tl.maximum(run_max, tl.max(z, axis=1))
            shift = run_max - new_max
            alpha = tl.exp(shift)
            centered = z - new_max[:, None]
            exp_c = tl.exp(centered)
            if WITH_ENTROPY:
                run_moment = alpha * (run_moment + shift * run_sum) + tl.sum(exp_c * centered, axis=1)
            run_sum = alpha * run_sum + tl.sum(exp_c, axis=1)
            run_max = new_max
        part = pid_chunk * N + offs_n
        tl.store(part_max_ptr + part, run_max, mask=mask_n)
        tl.store(part_sum_ptr + part, run_sum, mask=mask_n)
        if WITH_ENTROPY:
            tl.store(part_moment_ptr + part, run_moment, mask=mask_n)
        if WITH_ZSUM:
            tl.store(part_zsum_ptr + part, run_zsum - zsum_err, mask=mask_n)
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
    max_ptr,  # [N] fp32 out (WITH_MAX)
    N,
    num_chunks,
    ignore_index,
    WITH_ENTROPY: tl.constexpr,
    WITH_ZSUM: tl.constexpr,
    SAVE_LSE: tl.constexpr,
    WITH_MAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    targets = tl.load(targets_ptr + offs, mask=mask, other=ignore_index)
    active = mask & (targets != ignore_index)
    # Partials of inactive rows were never written: read them only where active.
    glob_max = tl.full((BLOCK,), NEG_BIG, dtype=tl.float32)
    for k in range(0, num_chunks):
        m_k = tl.load(part_max_ptr + k * N + offs, mask=active, other=NEG_BIG)
        glob_max = tl.maximum(glob_max, m_k)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    moment = tl.zeros((BLOCK,), dtype=tl.float32)
    zsum = tl.zeros((BLOCK,), dtype=tl.float32)
    zsum_err = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, num_chunks):
        m_k = tl.load(part_max_ptr + k * N + offs, mask=active, other=NEG_BIG)
        s_k = tl.load(part_sum_ptr + k * N + offs, mask=active, other=0.0)
        shift = m_k - glob_max
        scale = tl.exp(shift)
        total += scale * s_k
        if WITH_ENTROPY:
            t_k = tl.load(part_moment_ptr + k * N + offs, mask=active, other=0.0)
            moment += scale * (t_k + shift * s_k)
        if WITH_ZSUM:
            z_k = tl.load(part_zsum_ptr + k * N + offs, mask=active, other=0.0)
            zsum, zsum_err = _kahan_add(zsum, zsum_err, z_k)
    total = tl.where(active, total, 1.0)
    log_total = tl.log(total)
    lse = glob_max + log_total
    target_logit = tl.load(target_logit_ptr + offs, mask=active, other=0.0)
    # Relative to the maximum: target - lse would cancel when logits are huge (1e6 + ln V
    # does not fit fp32's mantissa), (target - m) - ln(total) does not.
    logprob = (target_logit - glob_max) - log_total
    tl.store(logprob_ptr + offs, tl.where(active, logprob, 0.0), mask=mask)
    if SAVE_LSE:
        tl.store(lse_ptr + offs, tl.where(active, lse, 0.0), mask=mask)
    if WITH_ENTROPY:
        entropy = log_total - moment / total
        tl.store(entropy_ptr + offs, tl.where(active, entropy, 0.0), mask=mask)
    if WITH_ZSUM:
        tl.store(zsum_ptr + offs, tl.where(active, zsum - zsum_err, 0.0), mask=mask)
    if WITH_MAX:
        tl.store(max_ptr + offs, tl.where(active, glob_max, 0.0), mask=mask)
