"""Launchers of the Triton kernels of the fused linear log-prob op (no autograd here).

Every launch goes through a plan of ``fastalign.kernels.plans`` (grid, scalars, constexprs):
the same plans the ahead-of-time compile gate checks. Hidden rows are addressed from at most
two leading strides, so ``hidden[:, :-1]`` and other views are read in place; nothing of size
``N x V`` is allocated.

Backward modes:

- ``"chunked"`` (default on CUDA): per chunk of rows whose ``[rows, V]`` logits gradient fits
  ``memory_budget`` bytes, one kernel writes that gradient (input dtype) and cuBLAS computes
  ``dH = G @ W`` and ``dW += G^T @ h`` (fp32 accumulation). Deterministic.
- ``"fused"`` (minimum memory): one kernel recomputes each logits tile and contracts it into
  fp32 dH/dW in place (relaxed atomics for dW, or two atomic-free launches when
  ``deterministic``). Chosen by ``"auto"`` when the budget cannot hold 128 rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from fastalign.kernels import plans
from fastalign.ops.calls import GradientRequest, LogitsCall
from fastalign.ops.gemm import addmm_fp32_, matmul_fp32

# The default extra memory of the chunked backward: the [rows, V] logits gradient buffer.
DEFAULT_BACKWARD_MEMORY_BUDGET = 1 << 30
BACKWARD_MODES = ("auto", "chunked", "fused")
# Under the interpreter there is no SM count; a small virtual one makes small N exercise
# the multi-chunk path in CPU tests.
_INTERPRETER_SMS = 4
_TRITON_DTYPE = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32",
}


class TritonStats(NamedTuple):
    """Per-row results of the forward; optional fields are ``None`` when not requested."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    lse: torch.Tensor | None
    logit_sum: torch.Tensor | None
    max_logit: torch.Tensor | None = None


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return _INTERPRETER_SMS


def _collapse_leading(shape, strides) -> list[tuple[int, int]]:
    """Leading ``(size, stride)`` pairs with size-1 dims dropped and mergeable dims merged."""
    dims = [(size, stride) for size, stride in zip(shape, strides) if size != 1]
    merged: list[tuple[int, int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == size * stride:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    return merged


def kernel_row_layout(hidden: torch.Tensor) -> tuple[plans.RowLayout, torch.Tensor]:
    """How the kernels address the rows of ``hidden [..., H]``, and the tensor they read.

    Views with at most two non-mergeable leading dims (``[N, H]``, ``[B, T, H]``,
    ``hidden[:, :-1]``) are read in place; a row with a non-unit stride along H, or three
    leading dims that cannot be merged, is copied once (``.contiguous()``).
    """
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    lead = _collapse_leading(hidden.shape[:-1], hidden.stride()[:-1])
    if len(lead) > 2:
        hidden = hidden.contiguous()
        lead = _collapse_leading(hidden.shape[:-1], hidden.stride()[:-1])
    if not lead:
        lead = [(1, hidden.shape[-1])]
    if len(lead) == 1:
        (size, stride), outer_stride = lead[0], 0
        inner = size
    else:
        (_, outer_stride), (inner, stride) = lead
    per_16_bytes = 16 // hidden.element_size()
    aligned = (
        hidden.data_ptr() % 16 == 0
        and outer_stride % per_16_bytes == 0
        and stride % per_16_bytes == 0
    )
    layout = plans.RowLayout(
        rows_inner=max(inner, 1), stride_outer=outer_stride, stride_inner=stride,
        row_align=per_16_bytes if aligned else 1,
    )
    return layout, hidden


def _weight_for_kernels(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.stride(1) == 1 else weight.contiguous()


def _flat_targets(targets: torch.Tensor) -> torch.Tensor:
    flat = targets.reshape(-1)
    if flat.dtype not in (torch.int64, torch.int32):
        flat = flat.long()
    return flat.contiguous()


def _launch(launch: plans.Launch, tensors: dict[str, torch.Tensor]) -> None:
    if tensors.keys() != launch.pointers.keys():
        raise RuntimeError(
            f"launcher/plan mismatch for {launch.function.__name__}: "
            f"{sorted(tensors.keys() ^ launch.pointers.keys())}"
        )
    options = {} if launch.table is not None else {"num_warps": launch.num_warps}
    launch.kernel[launch.grid](**tensors, **launch.scalars, **launch.constexprs, **options)


def _head_call(hidden, weight, flat_targets, layout, features, ignore_index, temperature, softcap) -> plans.HeadCall:
    return plans.HeadCall(
        n_rows=flat_targets.numel(), vocab=weight.shape[0], hidden_size=weight.shape[1],
        dtype=_TRITON_DTYPE[hidden.dtype], layout=layout, features=features,
        targets_dtype=_TRITON_DTYPE[flat_targets.dtype], ignore_index=int(ignore_index),
        softcap=float(softcap) if softcap is not None else 1.0,
        inv_temperature=1.0 / float(temperature), stride_wv=weight.stride(0),
    )


def triton_forward(call: LogitsCall, *, with_entropy: bool, with_logit_sum: bool, with_max_logit: bool = False,
                   num_splits: int | None = None) -> TritonStats:
    """Run the forward kernels on ``call`` (``hidden [..., H]``, ``weight [V, H]``, ``targets [...]``).

    Returns fp32 ``[N]`` tensors (``N = targets.numel()``), zero at ignored rows.
    ``num_splits`` overrides the number of vocab chunks (tests use it to cover the combine).
    """
    hidden, weight, bias, targets, ignore_index, temperature, softcap = call
    device = hidden.device
    n_rows = targets.numel()
    layout, hidden = kernel_row_layout(hidden)
    weight = _weight_for_kernels(weight)
    flat_targets = _flat_targets(targets)
    features = plans.Features(
        has_bias=bias is not None, has_softcap=softcap is not None, with_entropy=with_entropy,
        with_logit_sum=with_logit_sum, with_max_logit=with_max_logit,
    )
    head = _head_call(hidden, weight, flat_targets, layout, features, ignore_index, temperature, softcap)
    forward, combine, chunks = plans.forward_plan(head, num_sms=_multiprocessors(device), num_chunks=num_splits)
    f32 = dict(dtype=torch.float32, device=device)
    part_max = torch.empty((chunks, n_rows), **f32)
    part_sum = torch.empty((chunks, n_rows), **f32)
    part_moment = torch.empty((chunks, n_rows), **f32) if with_entropy else part_sum
    part_zsum = torch.empty((chunks, n_rows), **f32) if with_logit_sum else part_sum
    target_logit = torch.empty(n_rows, **f32)
    partials = dict(
        targets_ptr=flat_targets, part_max_ptr=part_max, part_sum_ptr=part_sum,
        part_moment_ptr=part_moment, part_zsum_ptr=part_zsum, target_logit_ptr=target_logit,
    )
    _launch(forward, dict(
        h_ptr=hidden, w_ptr=weight, b_ptr=bias if bias is not None else weight, **partials,
    ))
    logprobs = torch.empty(n_rows, **f32)
    lse = torch.empty(n_rows, **f32)
    entropy = torch.empty(n_rows, **f32) if with_entropy else None
    logit_sum = torch.empty(n_rows, **f32) if with_logit_sum else None
    max_logit = torch.empty(n_rows, **f32) if with_max_logit else None
    _launch(combine, dict(
        **partials, logprob_ptr=logprobs, lse_ptr=lse,
        entropy_ptr=entropy if entropy is not None else logprobs,
        zsum_ptr=logit_sum if logit_sum is not None else logprobs,
        max_ptr=max_logit if max_logit is not None else logprobs,
    ))
    return TritonStats(logprobs, entropy, lse, logit_sum, max_logit)


def _upstream_features(grads: dict, bias: torch.Tensor | None, softcap: float | None) -> plans.Features:
    return plans.Features(
        has_bias=bias is not None, has_softcap=softcap is not None,
        has_dlogp=grads.get("logprobs") is not None, has_dlse=grads.get("lse") is not None,
        has_dentropy=grads.get("entropy") is not None, has_dzsum=grads.get("logit_sum") is not None,
    )


def _upstream_pointers(grads: dict, lse: torch.Tensor, entropy: torch.Tensor | None) -> dict:
    names = {"logprobs": "dlogp_ptr", "lse": "dlse_ptr", "entropy": "dentropy_ptr", "logit_sum": "dzsum_ptr"}
    pointers = {ptr: grads.get(key) if grads.get(key) is not None else lse for key, ptr in names.items()}
    pointers["lse_ptr"] = lse
    pointers["entropy_ptr"] = entropy if entropy is not None else lse
    return pointers


def choose_backward(mode: str, n_rows: int, vocab: int, elem_bytes: int, budget: int) -> tuple[str, int]:
    """``("chunked", rows per chunk)`` or ``("fused", 0)`` for a call; raises ``ValueError``
    when ``"chunked"`` is asked for with a budget below one 128-row chunk."""
    if mode not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {mode!r}")
    rows = plans.backward_chunk_rows(n_rows, vocab, elem_bytes, budget)
    if mode == "fused" or (mode == "auto" and rows == 0):
        return "fused", 0
    if rows == 0:
        need = plans.CHUNK_ROW_MULTIPLE * plans.dlogits_out_stride(vocab) * elem_bytes
        raise ValueError(
            f"backward_memory_budget={budget} bytes cannot hold one {plans.CHUNK_ROW_MULTIPLE}-row "
            f"chunk of the logits gradient ({need} bytes at V={vocab}); raise it or use "
            "backward='fused'"
        )
    return "chunked", rows


class _ChunkRows:
    """``[rows, H]`` matrices of hidden rows ``[r0, r1)``: a view when the rows are evenly
    strided, else a gather of just those rows."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden
        try:
            self.flat = hidden.view(-1, hidden.shape[-1])
        except RuntimeError:
            self.flat = None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if self.flat is not None:
            return self.flat[start:stop]
        rows = torch.arange(start, stop, device=self.hidden.device)
        return self.hidden[torch.unravel_index(rows, self.hidden.shape[:-1])]


def _chunked_backward(call: LogitsCall, request: GradientRequest, head: plans.HeadCall, chunk_rows: int):
    hidden, weight, bias, flat_targets = call[:4]
    lse, entropy, grads, needs_hidden_grad, needs_weight_grad, needs_bias_grad = request
    device = hidden.device
    n_rows = flat_targets.numel()
    vocab, hidden_size = weight.shape
    chunk_rows = min(chunk_rows, n_rows)
    buffer = torch.empty((chunk_rows, plans.dlogits_out_stride(vocab)), dtype=hidden.dtype, device=device)
    grad_hidden = torch.empty((n_rows, hidden_size), dtype=hidden.dtype, device=device) if needs_hidden_grad else None
    acc = torch.float32
    grad_weight = torch.zeros((vocab, hidden_size), dtype=acc, device=device) if needs_weight_grad else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=device) if needs_bias_grad else None
    rows_of = _ChunkRows(hidden)
    pointers = dict(
        h_ptr=hidden, w_ptr=weight, b_ptr=bias if bias is not None else weight,
        targets_ptr=flat_targets, out_ptr=buffer, **_upstream_pointers(grads, lse, entropy),
    )
    for start in range(0, n_rows, chunk_rows):
        rows = min(chunk_rows, n_rows - start)
        _launch(plans.dlogits_plan(head, start, rows), pointers)
        grad_logits = buffer[:rows, :vocab]
        if grad_hidden is not None:
            grad_hidden[start:start + rows] = matmul_fp32(grad_logits, weight)
        if grad_weight is not None:
            addmm_fp32_(grad_weight, grad_logits.t(), rows_of(start, start + rows))
        if grad_bias is not None:
            grad_bias += grad_logits.sum(dim=0, dtype=acc)
    return grad_hidden, grad_weight, grad_bias


def _fused_backward(call: LogitsCall, request: GradientRequest, head: plans.HeadCall,
                    deterministic: bool, filter_eps: float | None, num_splits: int | None):
    hidden, weight, bias, flat_targets = call[:4]
    lse, entropy, grads, needs_hidden_grad, needs_weight_grad, needs_bias_grad = request
    device = hidden.device
    n_rows = flat_targets.numel()
    vocab, hidden_size = weight.shape
    f32 = dict(dtype=torch.float32, device=device)
    # Unused outputs point at a private scratch word: the autotuner zeroes all three.
    scratch = torch.zeros(1, **f32)
    grad_hidden = torch.zeros((n_rows, hidden_size), **f32) if needs_hidden_grad else None
    grad_weight = torch.zeros((vocab, hidden_size), **f32) if needs_weight_grad else None
    grad_bias = torch.zeros(vocab, **f32) if needs_bias_grad else None
    base = dict(
        h_ptr=hidden, w_ptr=weight, b_ptr=bias if bias is not None else weight,
        targets_ptr=flat_targets, **_upstream_pointers(grads, lse, entropy),
    )

    def launch(own_rows, splits, compute_dh, compute_params, dh_atomic, dw_atomic):
        schedule = plans.FusedSchedule(
            own_rows=own_rows, splits=splits, compute_dh=compute_dh,
            compute_dw=compute_params and needs_weight_grad,
            compute_db=compute_params and needs_bias_grad, dh_atomic=dh_atomic,
            dw_atomic=dw_atomic, filter_eps=filter_eps,
        )
        _launch(plans.fused_backward_plan(head, schedule), dict(
            **base,
            dh_ptr=grad_hidden if compute_dh else scratch,
            dw_ptr=grad_weight if compute_params and grad_weight is not None else scratch,
            db_ptr=grad_bias if compute_params and grad_bias is not None else scratch,
        ))

    sms = _multiprocessors(device)
    needs_params = needs_weight_grad or needs_bias_grad
    row_blocks = plans.cdiv(n_rows, plans.NOMINAL_BLOCK_N)
    if deterministic:
        if needs_hidden_grad:
            launch(True, 1, True, False, False, False)
        if needs_params:
            launch(False, 1, False, True, False, False)
    elif needs_hidden_grad:
        splits = num_splits or _splits(row_blocks, vocab, 2048, sms)
        launch(True, splits, True, needs_params, splits > 1, True)
    elif needs_params:
        # Frozen hidden (rare): own vocab blocks so dW needs atomics only across row splits.
        vocab_blocks = plans.cdiv(vocab, plans.NOMINAL_BLOCK_N)
        splits = num_splits or _splits(vocab_blocks, n_rows, plans.NOMINAL_BLOCK_N, sms)
        launch(False, splits, False, True, False, splits > 1)
    if grad_hidden is not None:
        grad_hidden = grad_hidden.to(hidden.dtype)
    return grad_hidden, grad_weight, grad_bias


def _splits(num_blocks: int, swept_extent: int, min_per_split: int, sms: int) -> int:
    """How many programs share one owned block so that ~2 waves of programs exist."""
    wanted = plans.cdiv(2 * sms, max(num_blocks, 1))
    return max(1, min(wanted, max(1, swept_extent // min_per_split)))


def triton_backward(
    call: LogitsCall,
    request: GradientRequest,
    *,
    deterministic: bool = False,
    filter_eps: float | None = None,
    num_splits: int | None = None,
    backward: str = "auto",
    memory_budget: int = DEFAULT_BACKWARD_MEMORY_BUDGET,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(d hidden, d weight, d bias)`` (``None`` where not needed).

    ``grads`` maps ``logprobs``/``lse``/``entropy``/``logit_sum`` to fp32 ``[N]`` upstream
    gradients or ``None``. ``backward`` picks the mode (see the module docstring);
    ``deterministic``, ``filter_eps`` and ``num_splits`` concern the fused mode only (the
    chunked mode is deterministic and exact).
    """
    hidden, weight, bias, targets, ignore_index, temperature, softcap = call
    lse, entropy, grads, needs_hidden_grad, needs_weight_grad, needs_bias_grad = request
    n_rows = targets.numel()
    mode, chunk_rows = choose_backward(backward, n_rows, weight.shape[0], hidden.element_size(), memory_budget)
    grad_shape = hidden.shape
    layout, hidden = kernel_row_layout(hidden)
    weight = _weight_for_kernels(weight)
    flat_targets = _flat_targets(targets)
    upstream = {name: grads.get(name) for name in ("logprobs", "lse", "entropy", "logit_sum")}
    features = _upstream_features(upstream, bias, softcap)
    head = _head_call(hidden, weight, flat_targets, layout, features, ignore_index, temperature, softcap)
    if n_rows == 0 or all(g is None for g in upstream.values()):
        dh = torch.zeros(grad_shape, dtype=hidden.dtype, device=hidden.device) if needs_hidden_grad else None
        dw = torch.zeros_like(weight) if needs_weight_grad else None
        db = torch.zeros_like(bias) if needs_bias_grad else None
        return dh, dw, db
    # From here on: kernel row layout, flat targets, every upstream name present.
    call = call._replace(hidden=hidden, weight=weight, targets=flat_targets)
    request = request._replace(grads=upstream)
    if mode == "chunked":
        dh, dw, db = _chunked_backward(call, request, head, chunk_rows)
    else:
        dh, dw, db = _fused_backward(call, request, head, deterministic, filter_eps, num_splits)
    return (
        dh.view(grad_shape) if dh is not None else None,
        dw.to(weight.dtype) if dw is not None else None,
        db.to(bias.dtype) if db is not None else None,
    )

