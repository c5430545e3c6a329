"""fastalign: fast, memory-lean preference training (DPO, RLHF) for language models."""

from fastalign.ops import LogprobsAndEntropy, linear_cross_entropy, linear_logprobs

__version__ = "0.1.0"

__all__ = ["LogprobsAndEntropy", "linear_cross_entropy", "linear_logprobs", "__version__"]
