"""The pure-PyTorch path of the fused linear log-prob op: chunked over rows, recomputing.

Same semantics as the Triton kernels. Logits exist one chunk of rows at a time (at most
``CHUNK_ELEMENTS`` per ``[rows, V]`` buffer, and at most two such buffers at once); the
backward recomputes them. Only scored rows (target != ignore_index) are multiplied, and
non-contiguous hidden views are gathered a chunk at a time instead of being copied whole.
Used on CPU, for float64, and wherever Triton is absent.

Speed comes from doing the elementwise work in place on one chunk buffer (no temporaries the
size of the chunk beyond a second one for the probabilities), so that the four GEMMs
(forward, recompute, dH, dW) are most of the time. Numerics: every statistic is computed
relative to the row maximum, as in the kernels (``logp = (z_t - m) - log sum e^{z - m}``), so
rows of huge or equal logits lose nothing to cancellation, and a ``-inf`` logit (a masked
vocabulary entry) contributes exactly zero to the entropy and every gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastalign.ops.calls import GradientRequest, LogitsCall

# Elements of one [rows, V] logits chunk: 32M fp32 = 128 MiB, whatever N is. Big enough that
# the GEMMs run as fast as on whole matrices (CPU BLAS repacks the weight on every call: a
# 128-row chunk measured 1.4x the time of the unchunked GEMMs, a 512-row one 1.1x), small
# enough to stay under 1/5 of the full logits' memory at N = 2048, V = 65536.
CHUNK_ELEMENTS = 1 << 25


class TorchStats(NamedTuple):
    """Per-row results (``[N]``, zero at ignored rows); optional ones ``None`` if not asked."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    lse: torch.Tensor
    logit_sum: torch.Tensor | None
    max_logit: torch.Tensor | None = None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class _HiddenRows:
    """Reads rows of ``hidden [..., H]`` by flat row index without copying the whole tensor."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden
        self.lead_shape = hidden.shape[:-1]
        try:
            self.flat = hidden.view(-1, hidden.shape[-1])
        except RuntimeError:
            self.flat = None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.flat is not None:
            return self.flat.index_select(0, rows)
        return self.hidden[torch.unravel_index(rows, self.lead_shape)]


class _Workspace:
    """Chunk buffers reused across chunks: fresh ``[rows, V]`` allocations per chunk cost page
    faults and zeroing on CPU (large blocks come from mmap), buffers written with ``out=``
    do not. ``logits`` always exists; the others are made on first use."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = (rows, vocab), dtype, device
        self.logits = torch.empty(self.shape, dtype=dtype, device=device)
        self._extra: dict[str, torch.Tensor] = {}

    def extra(self, name: str, rows: int) -> torch.Tensor:
        if name not in self._extra:
            self._extra[name] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self._extra[name][:rows]


def _sampled_logits(
    hidden_rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    work: _Workspace,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``z = cap(h W^T + b) / T`` in the accumulation dtype, written into the workspace, and
    ``tanh(l / cap)`` (a second workspace buffer) when soft-capped."""
    rows = hidden_rows.shape[0]
    logits = work.logits[:rows]
    if hidden_rows.dtype == logits.dtype:
        if bias is None:
            torch.mm(hidden_rows, weight.t(), out=logits)
        else:
            torch.addmm(bias, hidden_rows, weight.t(), out=logits)
    else:  # half inputs: the GEMM runs in their dtype, as F.linear would
        logits.copy_(F.linear(hidden_rows, weight, bias))
    capped = None
    if softcap is not None:
        capped = torch.div(logits, softcap, out=work.extra("capped", rows)).tanh_()
        torch.mul(capped, softcap / temperature, out=logits)
    elif temperature != 1.0:
        logits.div_(temperature)
    return logits, capped


def _workspace(n_scored: int, weight: torch.Tensor, acc: torch.dtype) -> _Workspace:
    return _Workspace(min(n_scored, chunk_rows(weight.shape[0])), weight.shape[0], acc, weight.device)


def _scored_rows(targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (targets.reshape(-1) != ignore_index).nonzero().squeeze(1)


def torch_forward(call: LogitsCall, *, with_entropy: bool, with_logit_sum: bool,
                  with_max_logit: bool = False) -> TorchStats:
    """Per-row log-prob of the target, lse, and optionally entropy, logit sum and max (``[N]``)."""
    hidden, weight, bias, targets, ignore_index, temperature, softcap = call
    acc = accumulation_dtype(hidden.dtype)
    flat_targets = targets.reshape(-1)
    n_rows = flat_targets.numel()
    zeros = dict(dtype=acc, device=hidden.device)
    logprobs = torch.zeros(n_rows, **zeros)
    lse_all = torch.zeros(n_rows, **zeros)
    entropy = torch.zeros(n_rows, **zeros) if with_entropy else None
    logit_sum = torch.zeros(n_rows, **zeros) if with_logit_sum else None
    max_logit = torch.zeros(n_rows, **zeros) if with_max_logit else None
    read_rows = _HiddenRows(hidden)
    scored = _scored_rows(targets, ignore_index)
    work = _workspace(scored.numel(), weight, acc)
    for rows in scored.split(chunk_rows(weight.shape[0])):
        z, _ = _sampled_logits(read_rows(rows), weight, bias, temperature, softcap, work)
        row_max = z.amax(dim=1)
        if with_logit_sum:
            logit_sum[rows] = z.sum(dim=1)
        if with_max_logit:
            max_logit[rows] = row_max
        target = z.gather(1, flat_targets[rows].long()[:, None]).squeeze(1) - row_max
        centered = z.sub_(row_max[:, None])  # z - m, in place
        if with_entropy:
            weights = torch.exp(centered, out=work.extra("weights", rows.numel()))
            total = weights.sum(dim=1)
            # sum p * (z - m) with 0 * (-inf) = 0 for masked entries (-inf logits).
            moment = weights.mul_(centered).nan_to_num_(nan=0.0).sum(dim=1)
            log_total = total.log()
            entropy[rows] = log_total - moment / total
        else:
            log_total = centered.exp_().sum(dim=1).log_()
        logprobs[rows] = target - log_total
        lse_all[rows] = row_max + log_total
    return TorchStats(logprobs, entropy, lse_all, logit_sum, max_logit)


def _logits_grad(
    z: torch.Tensor,
    capped: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    upstream: dict[str, torch.Tensor | None],
    temperature: float,
    prob_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place on ``z`` (``prob_buffer``: scratch for the entropy term): the gradient w.r.t.
    the raw logits of one chunk (see the kernels' math in docs/kernels.md).

    ``g = a [j == t] + u - p (a - c + e (z - sum p z))``, divided by T and chained through
    the soft-cap; ``z - sum p z = log p + H``. Returns ``z``'s storage.
    """
    d_logp, d_lse, d_ent, d_zsum = (upstream[k] for k in ("logprobs", "lse", "entropy", "logit_sum"))
    # 1/T is folded into the row coefficients instead of a pass over the chunk.
    inv_t = 1.0 / temperature
    coef = torch.zeros_like(lse)
    if d_logp is not None:
        coef += d_logp
    if d_lse is not None:
        coef -= d_lse
    log_p = z.sub_(lse[:, None])
    if d_ent is not None:
        prob = torch.exp(log_p, out=prob_buffer) if prob_buffer is not None else torch.exp(log_p)
        # (log p + H) * e + coef, times -p / T. Below 2 log(tiny), p is exactly 0 in this
        # dtype: clamping there keeps masked entries (log p = -inf) finite, so they give 0.
        floor = 2.0 * math.log(torch.finfo(z.dtype).tiny)
        grad = log_p.clamp_(min=floor).add_(entropy[:, None]).mul_(d_ent[:, None])
        grad = grad.add_(coef[:, None]).mul_(prob).mul_(-inv_t)
    else:
        grad = log_p.exp_().mul_((-inv_t) * coef[:, None])
    if d_logp is not None:
        grad.scatter_add_(1, targets[:, None], (inv_t * d_logp)[:, None].to(grad.dtype))
    if d_zsum is not None:
        grad.add_((inv_t * d_zsum)[:, None])
    if capped is not None:
        grad.mul_(1.0 - capped.square_())
    return grad


def torch_backward(call: LogitsCall, request: GradientRequest
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(d hidden, d weight, d bias)`` (``None`` where not requested) from the
    upstream per-row gradients of ``request``. dW and db accumulate in fp32 (fp64 for float64
    inputs) across chunks.
    """
    hidden, weight, bias, targets, ignore_index, temperature, softcap = call
    lse, entropy, grads, needs_hidden_grad, needs_weight_grad, needs_bias_grad = request
    acc = accumulation_dtype(hidden.dtype)
    flat_targets = targets.reshape(-1)
    vocab, hidden_size = weight.shape
    grad_hidden = torch.zeros(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs_hidden_grad else None
    grad_hidden_flat = grad_hidden.view(-1, hidden_size) if grad_hidden is not None else None
    grad_weight = torch.zeros((vocab, hidden_size), dtype=acc, device=weight.device) if needs_weight_grad else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if needs_bias_grad else None
    names = ("logprobs", "lse", "entropy", "logit_sum")
    weight_acc = weight if weight.dtype == acc else None
    read_rows = _HiddenRows(hidden)
    scored = _scored_rows(targets, ignore_index)
    work = _workspace(scored.numel(), weight, acc)
    for rows in scored.split(chunk_rows(vocab)):
        h = read_rows(rows)
        z, capped = _sampled_logits(h, weight, bias, temperature, softcap, work)
        upstream = {k: grads[k][rows].to(acc) if grads.get(k) is not None else None for k in names}
        row_entropy = entropy[rows].to(acc) if entropy is not None else None
        prob_buffer = work.extra("prob", rows.numel()) if upstream["entropy"] is not None else None
        grad = _logits_grad(z, capped, flat_targets[rows].long(), lse[rows].to(acc), row_entropy,
                            upstream, temperature, prob_buffer)
        if grad_hidden_flat is not None:
            if weight_acc is None:
                weight_acc = weight.to(acc)
            grad_hidden_flat[rows] = torch.mm(grad, weight_acc).to(hidden.dtype)
        if grad_weight is not None:
            grad_weight.addmm_(grad.t(), h.to(acc))
        if grad_bias is not None:
            grad_bias += grad.sum(dim=0)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


@torch.no_grad()
def torch_log_sum_sq_probs(call: LogitsCall) -> torch.Tensor:
    """``log sum_j p_j^2`` per row (fp32 ``[N]``, 0 where ignored), chunked, without gradient.

    ``log sum p^2 = lse(2z) - 2 lse(z)``: the collision probability WPO weights pairs by.
    """
    hidden, weight, bias, targets, ignore_index, temperature, softcap = call
    acc = accumulation_dtype(hidden.dtype)
    out = torch.zeros(targets.numel(), dtype=acc, device=hidden.device)
    read_rows = _HiddenRows(hidden)
    scored = _scored_rows(targets, ignore_index)
    work = _workspace(scored.numel(), weight, acc)
    for rows in scored.split(chunk_rows(weight.shape[0])):
        z, _ = _sampled_logits(read_rows(rows), weight, bias, temperature, softcap, work)
        out[rows] = torch.logsumexp(2 * z, dim=1) - 2 * torch.logsumexp(z, dim=1)
    return out.view(targets.shape)
