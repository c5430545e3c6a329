"""Implementations of "per-token log-probs from hidden states and an LM head" to compare.

Each provider maps ``(hidden [N, H], weight [V, H], targets [N])`` to differentiable fp32
log-probs ``[N]``. Peers that are not installed, or need a GPU that is absent, report why
instead of being faked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastalign.ops.dispatch import triton_importable
from fastalign.ops.linear_logprobs import linear_logprobs

LogprobFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Provider:
    name: str
    build: Callable[[], LogprobFn]
    needs: Callable[[torch.device], str | None]  # None when usable, else the reason


def naive_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What most training code does: full logits, fp32 log-softmax, gather."""
    logits = (hidden @ weight.T).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _always(_device: torch.device) -> str | None:
    return None


def _needs_cuda_and(module: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
        if device.type != "cuda":
            return f"{module} needs a CUDA device"
        return None

    return check


def _triton_needs(device: torch.device) -> str | None:
    if not triton_importable():
        return "triton is not installed"
    if device.type != "cuda":
        return "Triton kernels need a CUDA device (interpreter timings are meaningless)"
    return None


def _compiled() -> LogprobFn:
    return torch.compile(naive_logprobs, dynamic=False)


def _liger() -> LogprobFn:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
    return lambda hidden, weight, targets: -loss(weight, hidden, targets).float()


def _cut_cross_entropy() -> LogprobFn:
    from cut_cross_entropy import linear_cross_entropy as cce

    return lambda hidden, weight, targets: -cce(hidden, weight, targets, reduction="none", filter_eps=None).float()


PROVIDERS = {
    "naive": Provider("naive", lambda: naive_logprobs, _always),
    "torch_compile": Provider("torch_compile", _compiled, _always),
    "chunked_torch": Provider(
        "chunked_torch", lambda: lambda h, w, t: linear_logprobs(h, w, t, impl="torch"), _always
    ),
    "fastalign": Provider(
        "fastalign", lambda: lambda h, w, t: linear_logprobs(h, w, t, impl="triton"), _triton_needs
    ),
    # The minimum-memory backward (one fused kernel, no [rows, V] buffer).
    "fastalign_fused": Provider(
        "fastalign_fused",
        lambda: lambda h, w, t: linear_logprobs(h, w, t, impl="triton", backward="fused"),
        _triton_needs,
    ),
    "liger": Provider("liger", _liger, _needs_cuda_and("liger_kernel")),
    "cut_cross_entropy": Provider("cut_cross_entropy", _cut_cross_entropy, _needs_cuda_and("cut_cross_entropy")),
}
