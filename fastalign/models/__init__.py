"""Model glue: the policy module (HF causal LM + fused log-prob head) and packed log-probs."""

from fastalign.models.checkpointing import enable_activation_checkpointing
from fastalign.models.policy import (
    PackedLogprobs,
    PolicyModel,
    TokenLogprobs,
    packed_logprobs,
)

__all__ = ["enable_activation_checkpointing", "PackedLogprobs", "PolicyModel", "TokenLogprobs", "packed_logprobs"]
