"""The pure-PyTorch path of the fused linear log-prob op: chunked over rows, recomputing.

Same semantics as the Triton kernels. Logits exist one chunk of rows at a time (at most
``CHUNK_ELEMENTS`` per ``[rows, V]`` tensor); the backward recomputes them. Only scored rows
(target != ignore_index) are ever multiplied, and non-contiguous hidden views are gathered a
chunk at a time instead of being copied whole. Used on CPU, for float64, and wherever Triton
is absent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Elements of one [rows, V] logits chunk: 4M fp32 = 16 MiB, whatever N is.
CHUNK_ELEMENTS = 1 << 22


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


def _sampled_logits(
    hidden_rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``z = cap(h W^T + b) / T`` in the accumulation dtype, and ``tanh(l / cap)`` if capped."""
    logits = F.linear(hidden_rows, weight, bias).to(accumulation_dtype(hidden_rows.dtype))
    capped = None
    if softcap is not None:
        capped = torch.tanh(logits / softcap)
        logits = capped * softcap
    if temperature != 1.0:
        logits = logits / temperature
    return logits, capped


def _scored_rows(targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (targets.reshape(-1) != ignore_index).nonzero().squeeze(1)


def torch_forward(
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
) -> TorchStats:
    """Per-row log-prob of the target, lse, and optionally entropy, logit sum and max (``[N]``)."""
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
    for rows in _scored_rows(targets, ignore_index).split(chunk_rows(weight.shape[0])):
        z, _ = _sampled_logits(read_rows(rows), weight, bias, temperature, softcap)
        lse = torch.logsumexp(z, dim=1)
        row_targets = flat_targets[rows].long()
        logprobs[rows] = z.gather(1, row_targets[:, None]).squeeze(1) - lse
        lse_all[rows] = lse
        if with_entropy:
            # -sum p log p, not lse - sum p z: no cancellation when logits are ~1e4.
            log_p = z - lse[:, None]
            entropy[rows] = -(log_p.exp() * log_p).sum(dim=1)
        if with_logit_sum:
            logit_sum[rows] = z.sum(dim=1)
        if with_max_logit:
            max_logit[rows] = z.amax(dim=1)
    return TorchStats(logprobs, entropy, lse_all, logit_sum, max_logit)


def torch_backward(
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
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(d hidden, d weight, d bias)`` from upstream per-row gradients.

    ``grads`` maps ``logprobs``/``lse``/``entropy``/``logit_sum`` to ``[N]`` tensors or None.
    dW and db accumulate in fp32 (fp64 for float64 inputs) across chunks.
    """
    acc = accumulation_dtype(hidden.dtype)
    flat_targets = targets.reshape(-1)
    vocab, hidden_size = weight.shape
    grad_hidden = torch.zeros(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs_hidden_grad else None
    grad_hidden_flat = grad_hidden.view(-1, hidden_size) if grad_hidden is not None else None
    grad_weight = torch.zeros((vocab, hidden_size), dtype=acc, device=weight.device) if needs_weight_grad else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if needs_bias_grad else None
    d_logp, d_lse, d_ent, d_zsum = (grads.get(k) for k in ("logprobs", "lse", "entropy", "logit_sum"))
    read_rows = _HiddenRows(hidden)
    for rows in _scored_rows(targets, ignore_index).split(chunk_rows(vocab)):
        h = read_rows(rows)
        z, capped = _sampled_logits(h, weight, bias, temperature, softcap)
        row_lse = lse[rows].to(acc)
        prob = (z - row_lse[:, None]).exp_()
        coef = torch.zeros_like(row_lse)
        if d_logp is not None:
            coef += d_logp[rows]
        if d_lse is not None:
            coef -= d_lse[rows]
        grad = prob * (-coef[:, None])
        if d_ent is not None:
            mean_z = row_lse - entropy[rows]
            grad -= prob * d_ent[rows][:, None] * (z - mean_z[:, None])
        del prob
        if d_logp is not None:
            grad.scatter_add_(1, flat_targets[rows].long()[:, None], d_logp[rows][:, None].to(acc))
        if d_zsum is not None:
            grad += d_zsum[rows][:, None]
        if temperature != 1.0:
            grad /= temperature
        if capped is not None:
            grad *= 1.0 - capped * capped
        if grad_hidden_flat is not None:
            grad_hidden_flat[rows] = grad.to(hidden.dtype) @ weight
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
def torch_log_sum_sq_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    ignore_index: int,
    temperature: float,
    softcap: float | None,
) -> torch.Tensor:
    """``log sum_j p_j^2`` per row (fp32 ``[N]``, 0 where ignored), chunked, without gradient.

    ``log sum p^2 = lse(2z) - 2 lse(z)``: the collision probability WPO weights pairs by.
    """
    acc = accumulation_dtype(hidden.dtype)
    out = torch.zeros(targets.numel(), dtype=acc, device=hidden.device)
    read_rows = _HiddenRows(hidden)
    for rows in _scored_rows(targets, ignore_index).split(chunk_rows(weight.shape[0])):
        z, _ = _sampled_logits(read_rows(rows), weight, bias, temperature, softcap)
        out[rows] = torch.logsumexp(2 * z, dim=1) - 2 * torch.logsumexp(z, dim=1)
    return out.view(targets.shape)
