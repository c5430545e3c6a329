"""The implementations benchmarks compare, with what each needs.

``PROVIDERS``: "per-token log-probs from hidden states and an LM head". Each maps
``(hidden [N, H], weight [V, H], targets [N])`` to differentiable fp32 log-probs ``[N]``.

``DPO_PROVIDERS``: one DPO step of the head, policy forward+backward plus the reference forward.
Each builds, for a device, a step ``(weight, hidden, target, ref_hidden, ref_weight) -> loss``;
``make_dpo_batch`` makes its inputs.

Peers that are not installed, or need a GPU that is absent, report why instead of being faked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastalign.losses import FusedLinearDPOLoss, dpo_loss
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


def _installed(module: str) -> Callable[[torch.device], str | None]:
    return lambda _device: None if importlib.util.find_spec(module) else f"{module} is not installed"


def _needs_cuda_and(module: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        missing = _installed(module)(device)
        if missing is not None:
            return missing
        return None if device.type == "cuda" else f"{module} needs a CUDA device"

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


# -- the DPO head step ------------------------------------------------------------------------
BETA = 0.1
DPOStep = Callable[..., torch.Tensor]  # (weight, hidden, target, ref_hidden, ref_weight) -> loss


def naive_dpo(weight, hidden, target, ref_hidden, ref_weight) -> torch.Tensor:
    """Full logits for policy and reference, log_softmax, gather, the DPO loss."""
    def sequence_logps(h, w):
        logits = (h @ w.T).float()
        scored = target != -100
        picked = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * scored).sum(-1)

    policy = sequence_logps(hidden, weight)
    with torch.no_grad():
        ref = sequence_logps(ref_hidden, ref_weight)
    half = policy.shape[0] // 2
    return dpo_loss(policy[:half], policy[half:], ref[:half], ref[half:], beta=BETA).loss


def _liger_dpo(device: torch.device) -> DPOStep:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    layer = LigerFusedLinearDPOLoss(beta=BETA, compiled=device.type == "cuda")
    return lambda w, h, t, rh, rw: layer(w, h, t, None, rh, rw)[0]


def _fastalign_dpo(device: torch.device) -> DPOStep:
    layer = FusedLinearDPOLoss(beta=BETA)
    return lambda w, h, t, rh, rw: layer(w, h, t, None, rh, rw)[0]


# name -> (build(device) -> step, needs(device) -> None when usable, else the reason)
DPO_PROVIDERS: dict[str, tuple[Callable[[torch.device], DPOStep], Callable[[torch.device], str | None]]] = {
    "naive": (lambda device: naive_dpo, _always),
    "liger": (_liger_dpo, _installed("liger_kernel")),
    "fastalign": (_fastalign_dpo, _always),
}


def make_dpo_batch(pairs: int, seq: int, h: int, v: int, dtype, device, *, prompt_fraction=0.6, seed=0):
    """``2 * pairs`` rows of ``seq`` tokens (chosen rows, then rejected); the first
    ``prompt_fraction`` of each row is prompt (target -100), like HH's long prompts."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, seq, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype)
    target = torch.randint(0, v, (2 * pairs, seq), generator=gen)
    target[:, : int(prompt_fraction * seq)] = -100
    ref_hidden = (hidden.float() + 0.05 * torch.randn(hidden.shape, generator=gen).to(device)).to(dtype)
    return weight, hidden, target.to(device), ref_hidden, weight.detach().clone()


def dpo_training_step(step: Callable, pairs: int, seq: int, h: int, v: int, dtype, device) -> Callable[[], None]:
    """One timed unit of the DPO-layer benchmarks: ``step`` (a provider's loss) on a fresh
    ``make_dpo_batch`` whose policy weight and hidden states need grad, then its backward."""
    weight, hidden, target, ref_hidden, ref_weight = make_dpo_batch(pairs, seq, h, v, dtype, device)
    weight.requires_grad_()
    hidden.requires_grad_()

    def run() -> None:
        weight.grad = hidden.grad = None
        step(weight, hidden, target, ref_hidden, ref_weight).backward()

    return run
