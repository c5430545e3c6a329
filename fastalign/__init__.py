"""fastalign: fast, memory-lean preference training (DPO, RLHF) for language models."""

from fastalign.losses import (
    FusedLinearCPOLoss,
    FusedLinearDPOLoss,
    FusedLinearGRPOLoss,
    FusedLinearKTOLoss,
    FusedLinearORPOLoss,
    FusedLinearPPOLoss,
    FusedLinearSimPOLoss,
)
from fastalign.ops import LogprobsAndEntropy, linear_cross_entropy, linear_logprobs

__version__ = "0.1.0"

__all__ = [
    "FusedLinearCPOLoss",
    "FusedLinearDPOLoss",
    "FusedLinearGRPOLoss",
    "FusedLinearKTOLoss",
    "FusedLinearORPOLoss",
    "FusedLinearPPOLoss",
    "FusedLinearSimPOLoss",
    "LogprobsAndEntropy",
    "linear_cross_entropy",
    "linear_logprobs",
    "__version__",
]
