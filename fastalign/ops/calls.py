"""One call of the fused linear log-prob op, as both implementations (Triton and the chunked
PyTorch path) receive it: the logits it is about and, for a backward, what the forward saved
and which gradients are wanted. One record instead of a dozen parameters per function keeps the
two implementations' interfaces identical by construction."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LogitsCall(NamedTuple):
    """The logits ``z = cap(h·Wᵀ + b) / T`` (``cap(l) = c·tanh(l / c)`` when ``softcap = c``) of
    the rows whose target is not ``ignore_index``.

    ``hidden [..., H]`` (fp32 / fp16 / bf16 / fp64), ``weight [V, H]`` (same dtype), ``bias [V]``
    or ``None``, ``targets [...]`` integer ids in ``[0, V)`` or ``ignore_index``."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    targets: Tensor
    ignore_index: int = -100
    temperature: float = 1.0
    softcap: float | None = None


class GradientRequest(NamedTuple):
    """What a backward needs besides the logits: the forward's per-row ``lse [N]`` (and
    ``entropy [N]`` when an entropy gradient flows), the upstream gradients ``grads`` (keys
    ``logprobs`` / ``lse`` / ``entropy`` / ``logit_sum``, each ``[N]`` or ``None``), and which
    input gradients to compute."""

    lse: Tensor
    entropy: Tensor | None
    grads: dict[str, Tensor | None]
    needs_hidden_grad: bool = True
    needs_weight_grad: bool = True
    needs_bias_grad: bool = False
