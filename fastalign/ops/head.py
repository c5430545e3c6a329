"""``FusedHead``: an LM head as the fused op sees it — weight, bias, final soft-cap, logit scale.

Causal LMs differ in what they do to ``h W^T + b`` before the softmax: Gemma 2 soft-caps it
(``final_logit_softcapping``), Cohere multiplies it by ``logit_scale``, Granite divides it by
``logits_scaling``. This dataclass holds those settings as plain tensors and numbers and
applies them the same way on every path that scores tokens without materializing logits:
``PolicyModel``, the Hugging Face fused head (``fastalign.integrations.hf``) and the fused
loss layers (``fastalign.losses.fused*``, which take raw ``weight`` / ``bias``). Reading the
settings off a transformers model is ``fastalign.models.head.fused_head_of`` (models sit
above ops; this module knows nothing about transformers).

The logits it scores are ``z = cap(scale * (h W^T + b)) / T``: the scale first, as the model's
own forward applies it to the LM head's output, then the soft-cap ``c * tanh(l / c)``, then the
sampling temperature ``T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from fastalign.ops.calls import LogitsCall
from fastalign.ops.chunked_torch import torch_log_sum_sq_probs
from fastalign.ops.linear_logprobs import LinearLogprobStats, LogprobsAndEntropy, linear_logprob_stats, linear_logprobs


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class FusedHead:
    """A linear LM head for the fused op.

    Attributes:
        weight: ``[V, H]`` LM-head weight (the parameter itself: gradients reach it).
        bias: optional ``[V]`` LM-head bias.
        softcap: final-logit soft-cap ``c`` (Gemma 2's ``final_logit_softcapping``), or None.
        logit_scale: factor on ``h W^T + b`` before the soft-cap (Cohere's ``logit_scale``;
            1.0: none). It is folded into the hidden rows — ``(s h) W^T = s (h W^T)`` — because
            the op has no scale argument; with a bias that would need ``s b`` as well, so a
            scale together with a bias is refused (no supported family has both).
    """

    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None
    logit_scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.logit_scale, bool) or not isinstance(self.logit_scale, (int, float)) \
                or not math.isfinite(self.logit_scale):
            raise ValueError(f"logit_scale must be a finite number, got {self.logit_scale!r}")
        if self.logit_scale != 1.0 and self.bias is not None:
            raise ValueError("a logit scale with an LM-head bias is not supported by the fused head")

    def scaled(self, hidden: Tensor) -> Tensor:
        """``hidden [..., H]`` times ``logit_scale`` (same dtype; ``hidden`` itself at scale 1)."""
        return hidden if self.logit_scale == 1.0 else hidden * self.logit_scale

    def logprobs(self, hidden: Tensor, targets: Tensor, **options) -> Tensor | LogprobsAndEntropy:
        """``linear_logprobs`` of this head: fp32 ``[...]`` log-probs of ``targets [...]`` given
        ``hidden [..., H]`` (a ``LogprobsAndEntropy`` with ``return_entropy=True``).

        ``options``: the op's other keywords (``ignore_index``, ``temperature``,
        ``return_entropy``, ``impl``, ...); ``bias`` and ``softcap`` come from the head."""
        return linear_logprobs(self.scaled(hidden), self.weight, targets, bias=self.bias,
                               softcap=self.softcap, **options)

    def stats(self, hidden: Tensor, targets: Tensor, **options) -> LinearLogprobStats:
        """``linear_logprob_stats`` of this head (log-probs, lse and the requested extras, each
        fp32 shaped like ``targets``); ``options`` as in ``logprobs``."""
        return linear_logprob_stats(self.scaled(hidden), self.weight, targets, bias=self.bias,
                                    softcap=self.softcap, **options)

    def log_sum_sq_probs(self, hidden: Tensor, targets: Tensor, *, ignore_index: int = -100,
                         temperature: float = 1.0) -> Tensor:
        """``log Σ_j p_j²`` per row (fp32, float64 for float64 input; shaped like ``targets``, 0
        where ignored), without gradient: an extra chunked pass over the vocabulary (TRL's
        ``log_sum_sq_probs``)."""
        return torch_log_sum_sq_probs(LogitsCall(
            self.scaled(hidden.detach()), self.weight.detach(), self.bias, targets,
            ignore_index=ignore_index, temperature=temperature, softcap=self.softcap,
        ))
