"""``fastalign.linear_logprobs``: per-token log-probs (and entropy) straight from hidden states.

``logp[n] = z[n, t_n] - logsumexp(z[n])`` with ``z = cap(h W^T + b) / T`` is computed without
materializing ``[N, V]`` logits, forward and backward. Both implementations (Triton kernels,
chunked PyTorch) sit behind one ``torch.library`` custom op with a registered autograd
formula, so ``torch.compile(fullgraph=True)`` traces through calls without graph breaks.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastalign.ops.autocast import autocast_disabled, cast_for_autocast
from fastalign.ops.calls import GradientRequest, LogitsCall
from fastalign.ops.chunked_torch import accumulation_dtype, torch_backward, torch_forward
from fastalign.ops.dispatch import resolve_impl
from fastalign.ops.validation import (
    check_linear_head_inputs,
    check_target_range,
    require_positive_finite,
    require_tensor,
)

# Mirrors of fastalign.ops.linear_logprobs_triton's constants (importing it needs triton).
BACKWARD_MODES = ("auto", "chunked", "fused")
DEFAULT_BACKWARD_MEMORY_BUDGET = 1 << 30


class LogprobsAndEntropy(NamedTuple):
    """``linear_logprobs(..., return_entropy=True)``: both shaped like ``targets``."""

    logprobs: Tensor
    entropy: Tensor


class LinearLogprobStats(NamedTuple):
    """Per-row statistics shaped like ``targets`` (``None`` where not requested).

    ``lse`` is ``logsumexp(z)``; ``logit_sum`` is ``sum_j z_j`` (label smoothing, mean logits).
    All are differentiable except ``max_logit`` (``max_j z_j``, for top-1 accuracy metrics).
    """

    logprobs: Tensor
    entropy: Tensor | None
    lse: Tensor
    logit_sum: Tensor | None
    max_logit: Tensor | None = None


_GRAD_NAMES = ("logprobs", "entropy", "lse", "logit_sum")


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return accumulation_dtype(dtype)


def default_backward() -> str:
    """What ``backward="auto"`` means for this call: ``$FASTALIGN_BACKWARD`` when set (so a
    whole program, e.g. one built on the fused loss layers, can switch to the
    minimum-memory backward without code changes), else ``"auto"``."""
    value = os.environ.get("FASTALIGN_BACKWARD", "auto") or "auto"
    if value not in BACKWARD_MODES:
        raise ValueError(f"FASTALIGN_BACKWARD must be one of {BACKWARD_MODES}, got {value!r}")
    return value


@torch.library.custom_op("fastalign::linear_logprob_stats", mutates_args=())
def _stats_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    ignore_index: int,
    temperature: float,
    softcap: Optional[float],
    with_entropy: bool,
    with_logit_sum: bool,
    with_max_logit: bool,
    deterministic: bool,
    filter_eps: Optional[float],
    impl: str,
    backward: str,
    memory_budget: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_target_range(targets, weight.shape[0], ignore_index)
    out_dtype = _output_dtype(hidden.dtype)
    empty = hidden.new_empty(0, dtype=out_dtype)
    if targets.numel() == 0:
        zeros = hidden.new_zeros(targets.shape, dtype=out_dtype)
        return (
            zeros,
            zeros.clone() if with_entropy else empty,
            hidden.new_zeros(0, dtype=out_dtype),
            zeros.clone() if with_logit_sum else empty.clone(),
            zeros.clone() if with_max_logit else empty.clone(),
        )
    call = LogitsCall(hidden, weight, bias, targets, ignore_index, temperature, softcap)
    wanted = dict(with_entropy=with_entropy, with_logit_sum=with_logit_sum, with_max_logit=with_max_logit)
    with autocast_disabled(hidden.device.type):
        if impl == "triton":
            from fastalign.ops.linear_logprobs_triton import triton_forward

            stats = triton_forward(call, **wanted)
        else:
            stats = torch_forward(call, **wanted)
    shape = targets.shape
    return (
        stats.logprobs.view(shape),
        stats.entropy.view(shape) if with_entropy else empty,
        stats.lse,
        stats.logit_sum.view(shape) if with_logit_sum else empty.clone(),
        stats.max_logit.view(shape) if with_max_logit else empty.clone(),
    )


@_stats_op.register_fake
def _stats_op_fake(hidden, weight, bias, targets, ignore_index, temperature, softcap,
                   with_entropy, with_logit_sum, with_max_logit, deterministic, filter_eps, impl,
                   backward, memory_budget):
    out_dtype = _output_dtype(hidden.dtype)
    per_row = hidden.new_empty(targets.shape, dtype=out_dtype)
    return (
        per_row,
        hidden.new_empty(targets.shape if with_entropy else (0,), dtype=out_dtype),
        hidden.new_empty((targets.numel(),), dtype=out_dtype),
        hidden.new_empty(targets.shape if with_logit_sum else (0,), dtype=out_dtype),
        hidden.new_empty(targets.shape if with_max_logit else (0,), dtype=out_dtype),
    )


@torch.library.custom_op("fastalign::linear_logprob_stats_backward", mutates_args=())
def _stats_backward_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    lse: Tensor,
    entropy: Tensor,
    grad_logprobs: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_logit_sum: Optional[Tensor],
    ignore_index: int,
    temperature: float,
    softcap: Optional[float],
    needs_hidden_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
    deterministic: bool,
    filter_eps: Optional[float],
    impl: str,
    backward: str,
    memory_budget: int,
) -> tuple[Tensor, Tensor, Tensor]:
    call = LogitsCall(hidden, weight, bias, targets, ignore_index, temperature, softcap)
    request = GradientRequest(
        lse=lse,
        entropy=entropy.reshape(-1) if entropy.numel() else None,
        grads=dict(zip(_GRAD_NAMES, (grad_logprobs, grad_entropy, grad_lse, grad_logit_sum))),
        needs_hidden_grad=needs_hidden_grad,
        needs_weight_grad=needs_weight_grad,
        needs_bias_grad=needs_bias_grad and bias is not None,
    )
    with autocast_disabled(hidden.device.type):
        if impl == "triton":
            from fastalign.ops.linear_logprobs_triton import triton_backward

            result = triton_backward(call, request, deterministic=deterministic, filter_eps=filter_eps,
                                     backward=backward, memory_budget=memory_budget)
        else:
            result = torch_backward(call, request)
    empty = hidden.new_empty(0)
    return tuple(g if g is not None else empty.clone() for g in result)


@_stats_backward_op.register_fake
def _stats_backward_fake(hidden, weight, bias, targets, lse, entropy, grad_logprobs, grad_entropy,
                         grad_lse, grad_logit_sum, ignore_index, temperature, softcap,
                         needs_hidden_grad, needs_weight_grad, needs_bias_grad, deterministic,
                         filter_eps, impl, backward, memory_budget):
    return (
        torch.empty_like(hidden) if needs_hidden_grad else hidden.new_empty(0),
        torch.empty_like(weight) if needs_weight_grad else hidden.new_empty(0),
        torch.empty_like(bias) if needs_bias_grad and bias is not None else hidden.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    (hidden, weight, bias, targets, ignore_index, temperature, softcap, _with_entropy,
     _with_logit_sum, _with_max_logit, deterministic, filter_eps, impl, backward,
     memory_budget) = inputs
    _logprobs, entropy, lse, _logit_sum, max_logit = output
    ctx.mark_non_differentiable(max_logit)
    # Outputs nobody differentiates arrive as None, not zeros: no wasted work, and no
    # 0 * inf = NaN from an unused entropy at a masked (-inf) logit.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
    ctx.options = dict(
        ignore_index=ignore_index,
        temperature=temperature,
        softcap=softcap,
        deterministic=deterministic,
        filter_eps=filter_eps,
        impl=impl,
        backward=backward,
        memory_budget=memory_budget,
    )


def _backward(ctx, *output_grads):
    output_grads = output_grads[:4]  # max_logit is not differentiable
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    acc = _output_dtype(hidden.dtype)
    grads = [
        g.reshape(-1).to(acc).contiguous() if g is not None and g.numel() > 0 else None
        for g in output_grads
    ]
    needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    no_grad_args = (None,) * 12
    if targets.numel() == 0:
        # Empty inputs: gradients are empty/zero tensors, not missing.
        return (
            torch.zeros_like(hidden) if needs_hidden else None,
            torch.zeros_like(weight) if needs_weight else None,
            torch.zeros_like(bias) if needs_bias else None,
        ) + no_grad_args
    if not (needs_hidden or needs_weight or needs_bias) or all(g is None for g in grads):
        return (None, None, None) + no_grad_args
    grad_hidden, grad_weight, grad_bias = _stats_backward_op(
        hidden, weight, bias, targets, lse, entropy, *grads,
        ignore_index=ctx.options["ignore_index"],
        temperature=ctx.options["temperature"],
        softcap=ctx.options["softcap"],
        needs_hidden_grad=needs_hidden,
        needs_weight_grad=needs_weight,
        needs_bias_grad=needs_bias,
        deterministic=ctx.options["deterministic"],
        filter_eps=ctx.options["filter_eps"],
        impl=ctx.options["impl"],
        backward=ctx.options["backward"],
        memory_budget=ctx.options["memory_budget"],
    )
    return (
        grad_hidden if needs_hidden else None,
        grad_weight if needs_weight else None,
        grad_bias if needs_bias else None,
    ) + no_grad_args


_stats_op.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fastalign.linear_logprobs does not support double backward (a gradient of its "
        "gradient, e.g. torch.autograd.grad(..., create_graph=True) followed by another "
        "backward): its backward recomputes logits inside a kernel with no autograd formula"
    )


def _keep_nothing(ctx, inputs, output):
    return None


_stats_backward_op.register_autograd(_no_double_backward, setup_context=_keep_nothing)


def linear_logprob_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    with_entropy: bool = False,
    with_logit_sum: bool = False,
    with_max_logit: bool = False,
    deterministic: bool = False,
    filter_eps: float | None = None,
    impl: str = "auto",
    backward: str = "auto",
    backward_memory_budget: int = DEFAULT_BACKWARD_MEMORY_BUDGET,
) -> LinearLogprobStats:
    """Per-row log-prob, lse and optionally entropy, logit sum and max logit; see ``linear_logprobs``.

    The building block of ``linear_cross_entropy`` (lse for z-loss, logit sum for label
    smoothing), of the fused losses (mean logits) and of the Hugging Face / TRL heads
    (``max_logit``: a target is the top-1 token when its logit equals it). ``filter_eps``
    (Triton path, fused backward only) skips backward tiles whose gradient entries are all
    below it (an approximation; off by default). ``backward`` and ``backward_memory_budget``:
    see ``linear_logprobs``.
    """
    require_tensor("hidden", hidden)
    require_tensor("weight", weight)
    hidden, weight, bias = cast_for_autocast(hidden, weight, bias)
    check_linear_head_inputs(
        hidden, weight, targets, bias,
        ignore_index=ignore_index, temperature=temperature, softcap=softcap,
    )
    require_positive_finite("filter_eps", filter_eps, allow_none=True)
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be a bool, got {deterministic!r}")
    if backward not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {backward!r}")
    if backward == "auto":
        backward = default_backward()
    if (isinstance(backward_memory_budget, bool) or not isinstance(backward_memory_budget, int)
            or backward_memory_budget < 0):
        raise ValueError(
            f"backward_memory_budget must be an int >= 0 (bytes), got {backward_memory_budget!r}"
        )
    resolved = resolve_impl(impl, hidden.device, hidden.dtype)
    logprobs, entropy, lse, logit_sum, max_logit = _stats_op(
        hidden, weight, bias, targets, int(ignore_index), float(temperature),
        float(softcap) if softcap is not None else None,
        bool(with_entropy), bool(with_logit_sum), bool(with_max_logit), deterministic,
        float(filter_eps) if filter_eps is not None else None, resolved, backward,
        int(backward_memory_budget),
    )
    return LinearLogprobStats(
        logprobs,
        entropy if with_entropy else None,
        lse.view(targets.shape),
        logit_sum if with_logit_sum else None,
        max_logit if with_max_logit else None,
    )


def linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    return_entropy: bool = False,
    deterministic: bool = False,
    impl: str = "auto",
    backward: str = "auto",
    backward_memory_budget: int = DEFAULT_BACKWARD_MEMORY_BUDGET,
) -> Tensor | LogprobsAndEntropy:
    """Log-probability of each target token under ``softmax(cap(hidden @ weight^T + bias) / T)``.

    Args:
        hidden: ``[..., H]`` final hidden states; fp32, fp16 or bf16 (float64 on the torch
            path). Any strided view is read in place (``hidden[:, :-1]`` is not copied).
        weight: ``[V, H]`` LM-head weight, same dtype and device as ``hidden``.
        targets: ``[...]`` integer token ids in ``[0, V)`` or ``ignore_index``.
        bias: optional ``[V]`` LM-head bias.
        ignore_index: target value whose position is not scored (output 0, no gradient).
        temperature: ``T > 0``; log-probs of the distribution the sampler drew from.
        softcap: optional final-logit soft-cap ``c``: ``c * tanh(l / c)`` (Gemma 2).
        return_entropy: also return the entropy of each row's distribution.
        deterministic: bitwise reproducible backward. The default Triton backward always is;
            the fused one then runs without atomics (one extra recompute).
        impl: ``"auto"`` (Triton on CUDA, chunked PyTorch elsewhere), ``"triton"``, ``"torch"``.
        backward: Triton backward mode. ``"chunked"``: per chunk of rows a kernel writes the
            logits gradient and cuBLAS computes dH and dW (4 GEMMs in all, the fastest);
            ``"fused"``: one kernel does recompute, dH and dW (no ``[rows, V]`` buffer, slower);
            ``"auto"``: chunked unless the budget cannot hold a 128-row chunk, or what the
            environment variable ``FASTALIGN_BACKWARD`` says.
        backward_memory_budget: bytes the chunked backward may use for its logits-gradient
            buffer (default 1 GiB; the weight gradient is accumulated in an extra fp32
            ``[V, H]`` buffer in both modes).

    Returns:
        fp32 tensor shaped like ``targets`` (float64 for float64 inputs), 0 where ignored; with
        ``return_entropy=True`` a ``LogprobsAndEntropy(logprobs, entropy)``. Differentiable
        w.r.t. ``hidden``, ``weight`` and ``bias`` through both outputs; nothing of size
        ``N x V`` is allocated, and no weight/bias gradient work is done when they are frozen.
    """
    stats = linear_logprob_stats(
        hidden, weight, targets,
        bias=bias, ignore_index=ignore_index, temperature=temperature, softcap=softcap,
        with_entropy=return_entropy, deterministic=deterministic, impl=impl,
        backward=backward, backward_memory_budget=backward_memory_budget,
    )
    if return_entropy:
        return LogprobsAndEntropy(stats.logprobs, stats.entropy)
    return stats.logprobs
