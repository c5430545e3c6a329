"""Gradient of the per-row outputs w.r.t. one tile of raw logits ``l = h W^T + b``.

For row ``n`` with target ``t`` and upstream gradients ``a = dlogp``, ``c = dlse``,
``e = dentropy``, ``u = dzsum``, the gradient w.r.t. the sampled logits ``z`` is

    g_j = a * [j == t] + u - p_j * (a - c + e * (z_j - (lse - H)))

(``lse - H`` is ``sum_j p_j z_j``); chained through the temperature and the soft-cap it is
``dl_j = g_j / T * (1 - tanh^2(l_j / cap))``. Only ``lse`` and ``H`` per row are needed,
which is what the forward saves.
"""

import triton
import triton.language as tl


@triton.jit
def row_upstream(ptr, offs_n, active, PRESENT: tl.constexpr):
    """Upstream gradient of one per-row output, zero where absent or inactive."""
    if PRESENT:
        return tl.load(ptr + offs_n, mask=active, other=0.0)
    return tl.zeros(offs_n.shape, dtype=tl.float32)


@triton.jit
def logits_grad_tile(
    z,  # [BLOCK_N, BLOCK_V] fp32 sampled logits
    offs_n,
    active,  # [BLOCK_N] rows that are scored
    targets,  # [BLOCK_N] int64
    offs_v,
    mask_v,
    lse_ptr,
    entropy_ptr,
    dlogp_ptr,
    dlse_ptr,
    dentropy_ptr,
    dzsum_ptr,
    softcap,
    inv_temperature,
    HAS_SOFTCAP: tl.constexpr,
    HAS_DLOGP: tl.constexpr,
    HAS_DLSE: tl.constexpr,
    HAS_DENTROPY: tl.constexpr,
    HAS_DZSUM: tl.constexpr,
):
    """fp32 gradient w.r.t. the raw logits of the tile; zero outside scored rows and V."""
    valid = active[:, None] & mask_v[None, :]
    lse = tl.load(lse_ptr + offs_n, mask=active, other=0.0)
    # Masked before the exponential: rows and columns outside hold garbage logits.
    prob = tl.exp(tl.where(valid, z - lse[:, None], -3.0e38))
    dlogp = row_upstream(dlogp_ptr, offs_n, active, HAS_DLOGP)
    coef = dlogp - row_upstream(dlse_ptr, offs_n, active, HAS_DLSE)
    grad = -prob * coef[:, None]
    if HAS_DENTROPY:
        dentropy = tl.load(dentropy_ptr + offs_n, mask=active, other=0.0)
        mean_z = lse - tl.load(entropy_ptr + offs_n, mask=active, other=0.0)
        grad -= prob * dentropy[:, None] * (z - mean_z[:, None])
    if HAS_DLOGP:
        is_target = offs_v[None, :] == targets[:, None]
        grad += tl.where(is_target, dlogp[:, None], 0.0)
    if HAS_DZSUM:
        grad += tl.load(dzsum_ptr + offs_n, mask=active, other=0.0)[:, None]
    grad = tl.where(valid, grad, 0.0) * inv_temperature
    if HAS_SOFTCAP:
        capped = z / (softcap * inv_temperature)
        grad = grad * (1.0 - capped * capped)
    return grad
