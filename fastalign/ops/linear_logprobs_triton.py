"""Launchers of the Triton kernels of the fused linear log-prob op (no autograd here).

Hidden rows are addressed through an int64 vector of element offsets, so any ``[..., H]``
view with a unit-free leading layout (``hidden[:, :-1]``, a slice of a packed batch) is read
in place: nothing of size ``N x H`` is copied and nothing of size ``N x V`` is allocated.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from fastalign.kernels.autotune import MAX_BLOCK_V
from fastalign.kernels.linear_logprob_bwd import linear_logprob_bwd_kernel
from fastalign.kernels.linear_logprob_fwd import (
    linear_logprob_combine_kernel,
    linear_logprob_fwd_kernel,
)

# Rows per block used to decide how many vocab splits small-N calls need (the autotuned
# BLOCK_N may differ; the split count only has to be roughly right).
_NOMINAL_BLOCK_N = 128
_MIN_VOCAB_PER_SPLIT = 2048
_COMBINE_BLOCK = 1024
# Under the interpreter there is no SM count; a small virtual one makes small N exercise
# the split-V path in CPU tests.
_INTERPRETER_SMS = 4


class TritonStats(NamedTuple):
    """Per-row results of the forward; optional fields are ``None`` when not requested."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    lse: torch.Tensor | None
    logit_sum: torch.Tensor | None
    max_logit: torch.Tensor | None = None


def hidden_row_offsets(hidden: torch.Tensor) -> torch.Tensor:
    """Element offsets (int64 ``[N]``) of each row of ``hidden [..., H]`` from its data pointer."""
    lead_shape = hidden.shape[:-1]
    offsets = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for dim, (size, stride) in enumerate(zip(lead_shape, hidden.stride()[:-1])):
        view_shape = [1] * len(lead_shape)
        view_shape[dim] = size
        offsets = offsets + (torch.arange(size, device=hidden.device) * stride).view(view_shape)
    return offsets.expand(lead_shape).reshape(-1)


def _dot_precision(dtype: torch.dtype) -> str:
    # Triton's default for fp32 dots is TF32, which is not fp32; half types ignore this.
    return "ieee" if dtype == torch.float32 else "tf32"


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_SMS


def choose_splits(num_blocks: int, swept_extent: int, min_per_split: int, device: torch.device) -> int:
    """How many programs share one owned block so that ~2 waves of programs exist."""
    wanted = -(-2 * _multiprocessors(device) // max(num_blocks, 1))
    most = max(1, swept_extent // min_per_split)
    return max(1, min(wanted, most))


def _scalars(temperature: float, softcap: float | None) -> dict:
    return dict(
        softcap=float(softcap) if softcap is not None else 1.0,
        inv_temperature=1.0 / float(temperature),
        HAS_SOFTCAP=softcap is not None,
    )


def triton_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    ignore_index: int,
    temperature: float,
    softcap: float | None,
    with_entropy: bool,
    with_logit_sum: bool,
    with_max_logit: bool = False,
    save_lse: bool = True,
    num_splits: int | None = None,
) -> TritonStats:
    """Run the forward kernels. ``hidden [..., H]``, ``weight [V, H]``, ``targets [...]``.

    Returns fp32 ``[N]`` tensors (``N = targets.numel()``), zero at ignored rows.
    ``num_splits`` overrides the vocab split count (tests use it to cover the combine).
    """
    device = hidden.device
    n_rows = targets.numel()
    vocab, hidden_size = weight.shape
    row_offsets = hidden_row_offsets(hidden)
    flat_targets = targets.reshape(-1)
    if num_splits is None:
        num_splits = choose_splits(
            -(-n_rows // _NOMINAL_BLOCK_N), vocab, _MIN_VOCAB_PER_SPLIT, device
        )
    # Cut splits at multiples of the largest BLOCK_V, then drop any that would be empty.
    v_per_split = -(-(-(-vocab // num_splits)) // MAX_BLOCK_V) * MAX_BLOCK_V
    num_splits = -(-vocab // v_per_split)

    f32 = dict(dtype=torch.float32, device=device)
    part_max = torch.empty((num_splits, n_rows), **f32)
    part_sum = torch.empty((num_splits, n_rows), **f32)
    part_moment = torch.empty((num_splits, n_rows), **f32) if with_entropy else part_sum
    part_zsum = torch.empty((num_splits, n_rows), **f32) if with_logit_sum else part_sum
    target_logit = torch.empty(n_rows, **f32)
    scalars = _scalars(temperature, softcap)

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_N"]), num_splits)

    linear_logprob_fwd_kernel[grid](
        hidden, row_offsets, weight, bias if bias is not None else weight, flat_targets,
        part_max, part_sum, part_moment, part_zsum, target_logit,
        n_rows, vocab, hidden_size, v_per_split,
        hidden.stride(-1), weight.stride(0), weight.stride(1),
        ignore_index, scalars["softcap"], scalars["inv_temperature"],
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=scalars["HAS_SOFTCAP"],
        WITH_ENTROPY=with_entropy,
        WITH_ZSUM=with_logit_sum,
        DOT_PRECISION=_dot_precision(hidden.dtype),
    )

    logprobs = torch.empty(n_rows, **f32)
    entropy = torch.empty(n_rows, **f32) if with_entropy else None
    lse = torch.empty(n_rows, **f32) if save_lse else None
    logit_sum = torch.empty(n_rows, **f32) if with_logit_sum else None
    linear_logprob_combine_kernel[(triton.cdiv(n_rows, _COMBINE_BLOCK),)](
        flat_targets, part_max, part_sum, part_moment, part_zsum, target_logit,
        logprobs,
        entropy if entropy is not None else logprobs,
        lse if lse is not None else logprobs,
        logit_sum if logit_sum is not None else logprobs,
        n_rows, num_splits, ignore_index,
        WITH_ENTROPY=with_entropy,
        WITH_ZSUM=with_logit_sum,
        SAVE_LSE=save_lse,
        BLOCK=_COMBINE_BLOCK,
    )
    max_logit = None
    if with_max_logit:
        # Each split already wrote its row maxima; rows of skipped (all-ignored) blocks hold garbage.
        scored = flat_targets != ignore_index
        max_logit = torch.where(scored, part_max.amax(dim=0), torch.zeros((), **f32))
    return TritonStats(logprobs, entropy, lse, logit_sum, max_logit)


def triton_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    grads: dict[str, torch.Tensor | None],
    *,
    ignore_index: int,
    temperature: float,
    softcap: float | None,
    needs_hidden_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
    deterministic: bool = False,
    filter_eps: float | None = None,
    num_splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(d hidden, d weight, d bias)`` (``None`` where not needed).

    ``grads`` maps ``logprobs``/``lse``/``entropy``/``logit_sum`` to fp32 ``[N]`` upstream
    gradients or ``None``. ``deterministic`` avoids atomics (two launches, 5 GEMM-equivalents
    instead of 4); otherwise dW (and dH when vocab is split) is reduced with fp32 atomics.
    """
    device = hidden.device
    n_rows = targets.numel()
    vocab, hidden_size = weight.shape
    f32 = dict(dtype=torch.float32, device=device)
    # Unused outputs point at a private scratch word: the autotuner zeroes all three.
    scratch = torch.zeros(1, **f32)
    grad_hidden = torch.zeros((n_rows, hidden_size), **f32) if needs_hidden_grad else None
    grad_weight = torch.zeros((vocab, hidden_size), **f32) if needs_weight_grad else None
    grad_bias = torch.zeros(vocab, **f32) if needs_bias_grad else None
    upstream = {name: grads.get(name) for name in ("logprobs", "lse", "entropy", "logit_sum")}
    scalars = _scalars(temperature, softcap)
    row_offsets = hidden_row_offsets(hidden)
    flat_targets = targets.reshape(-1)

    def launch(own_rows: bool, splits: int, compute_dh: bool, compute_dwb: bool, atomic_dh: bool, atomic_dw: bool):
        def grid(meta):
            owned = triton.cdiv(n_rows, meta["BLOCK_N"]) if own_rows else triton.cdiv(vocab, meta["BLOCK_V"])
            return (owned, splits)

        linear_logprob_bwd_kernel[grid](
            hidden, row_offsets, weight, bias if bias is not None else weight, flat_targets,
            lse, entropy if entropy is not None else lse,
            *(upstream[k] if upstream[k] is not None else lse for k in ("logprobs", "lse", "entropy", "logit_sum")),
            grad_hidden if compute_dh else scratch,
            grad_weight if compute_dwb and grad_weight is not None else scratch,
            grad_bias if compute_dwb and grad_bias is not None else scratch,
            n_rows, vocab, hidden_size,
            hidden.stride(-1), weight.stride(0), weight.stride(1),
            ignore_index, scalars["softcap"], scalars["inv_temperature"],
            float(filter_eps) if filter_eps is not None else 0.0,
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=scalars["HAS_SOFTCAP"],
            HAS_DLOGP=upstream["logprobs"] is not None,
            HAS_DLSE=upstream["lse"] is not None,
            HAS_DENTROPY=upstream["entropy"] is not None,
            HAS_DZSUM=upstream["logit_sum"] is not None,
            COMPUTE_DH=compute_dh,
            COMPUTE_DW=compute_dwb and needs_weight_grad,
            COMPUTE_DB=compute_dwb and needs_bias_grad,
            DH_ATOMIC=atomic_dh,
            DW_ATOMIC=atomic_dw,
            OWN_ROWS=own_rows,
            # The logit-sum gradient is uniform over the vocabulary: nothing may be filtered.
            FILTER=filter_eps is not None and upstream["logit_sum"] is None,
            DOT_PRECISION=_dot_precision(hidden.dtype),
        )

    needs_param_grad = needs_weight_grad or needs_bias_grad
    if n_rows > 0 and any(g is not None for g in upstream.values()):
        row_blocks = -(-n_rows // _NOMINAL_BLOCK_N)
        if deterministic:
            if needs_hidden_grad:
                launch(True, 1, True, False, False, False)
            if needs_param_grad:
                launch(False, 1, False, True, False, False)
        elif needs_hidden_grad:
            splits = num_splits or choose_splits(row_blocks, vocab, _MIN_VOCAB_PER_SPLIT, device)
            launch(True, splits, True, needs_param_grad, splits > 1, True)
        elif needs_param_grad:
            # Frozen hidden (rare): own vocab blocks so dW needs atomics only across row splits.
            vocab_blocks = -(-vocab // _NOMINAL_BLOCK_N)
            splits = num_splits or choose_splits(vocab_blocks, n_rows, _NOMINAL_BLOCK_N, device)
            launch(False, splits, False, True, False, splits > 1)

    if grad_hidden is not None:
        grad_hidden = grad_hidden.view(hidden.shape).to(hidden.dtype)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias
