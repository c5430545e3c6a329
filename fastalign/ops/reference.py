"""Full-logits oracle of the fused linear log-prob op. Tests and benchmarks only.

It materializes ``[N, V]`` logits on purpose: it is what every fused path is checked against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ReferenceStats(NamedTuple):
    """All per-row quantities, shaped like ``targets``, zero at ignored positions."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    lse: torch.Tensor
    logit_sum: torch.Tensor


def reference_linear_logprob_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    upcast_to: torch.dtype | None = torch.float64,
) -> ReferenceStats:
    """Naive, differentiable computation through full logits.

    ``upcast_to=torch.float64`` (default) is the oracle: inputs are upcast before the matmul.
    ``upcast_to=None`` is "plain PyTorch at the input dtype": the matmul runs at the inputs'
    dtype (fp32 accumulation inside, result rounded to that dtype) and the softmax in fp32,
    which is what the tolerance rule measures a fused kernel against.
    """
    if upcast_to is not None:
        hidden, weight = hidden.to(upcast_to), weight.to(upcast_to)
        bias = bias.to(upcast_to) if bias is not None else None
    logits = F.linear(hidden, weight, bias)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    scored = targets != ignore_index
    safe_targets = torch.where(scored, targets, torch.zeros_like(targets)).long()
    picked = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    lse = torch.logsumexp(logits, dim=-1)
    logit_sum = logits.sum(-1)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    return ReferenceStats(
        torch.where(scored, picked, zero),
        torch.where(scored, entropy, zero),
        torch.where(scored, lse, zero),
        torch.where(scored, logit_sum, zero),
    )
