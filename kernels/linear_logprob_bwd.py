"""Default backward of the fused linear log-prob op: the gradient of one chunk of logits.

``linear_logprob_dlogits_kernel`` recomputes each ``[BLOCK_N, BLOCK_V]`` logits tile of a
chunk of rows (a GEMM tile with full K) and writes the gradient w.r.t. the raw logits, in the
input dtype, into a ``[chunk, V]`` buffer; the launcher then runs ``dH = G @ W`` and
``dW += G^T @ h`` as cuBLAS GEMMs. No atomics, no read-modify-write: every element of the
buffer is written exactly once, so the backward is deterministic. Rows of the chunk that are
not scored are written as zeros without a recompute.
"""

import triton
import triton.language as tl

from .autotune import dlogits_configs, prune_dlogits_for_device
from .logits_grad import logits_grad_tile
from .logits_tile import grouped_tile, hidden_row_offsets, logits_tile


@triton.autotune(
    configs=dlogits_configs(),
    key=["H", "V", "n_bucket", "HAS_SOFTCAP", "HAS_DENTROPY"],
    prune_configs_by={"early_config_prune": prune_dlogits_for_device},
)
@triton.jit
def linear_logprob_dlogits_kernel(
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
    out_ptr,  # [chunk_rows, stride_out] in the input dtype; columns < V are written
    row_start,
    chunk_rows,
    V,
    H,
    n_bucket,  # autotune key only
    stride_out,
    rows_inner,
    stride_outer,
    stride_inner,
    stride_wv,
    ignore_index,
    softcap,
    inv_temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_DLOGP: tl.constexpr,
    HAS_DLSE: tl.constexpr,
    HAS_DENTROPY: tl.constexpr,
    HAS_DZSUM: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    pid_n, pid_v = grouped_tile(
        tl.program_id(0), tl.cdiv(chunk_rows, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP_N
    )
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = local < chunk_rows
    offs_n = row_start + local
    targets = tl.load(targets_ptr + offs_n, mask=mask_n, other=ignore_index).to(tl.int64)
    active = mask_n & (targets != ignore_index)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    mask_v = offs_v < V
    out_ptrs = out_ptr + local.to(tl.int64)[:, None] * stride_out + offs_v[None, :]
    out_mask = mask_n[:, None] & mask_v[None, :]
    if tl.max(active.to(tl.int32), axis=0) > 0:
        row_offsets = hidden_row_offsets(offs_n, row_start + chunk_rows, rows_inner, stride_outer, stride_inner, ROW_ALIGN)
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
        tl.store(out_ptrs, grad.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        zeros = tl.zeros((BLOCK_N, BLOCK_V), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptrs, zeros, mask=out_mask)
