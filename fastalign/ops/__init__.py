"""Launchers, autograd and dispatch of fastalign's fused ops (no ``@triton.jit`` code here)."""

from fastalign.ops.head import FusedHead
from fastalign.ops.linear_cross_entropy import linear_cross_entropy
from fastalign.ops.linear_logprobs import LinearLogprobStats, LogprobsAndEntropy, linear_logprob_stats, linear_logprobs

__all__ = [
    "FusedHead",
    "LinearLogprobStats",
    "LogprobsAndEntropy",
    "linear_cross_entropy",
    "linear_logprob_stats",
    "linear_logprobs",
]
