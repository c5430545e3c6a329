"""Model glue: the policy module (HF causal LM + fused log-prob head) and packed log-probs."""

from fastalign.models.checkpointing import enable_activation_checkpointing
from fastalign.models.policy import (
    PackedLogprobs,
    PolicyModel,
    TokenLogprobs,
    packed_logprobs,
    reduce_packed,
)
from fastalign.models.reference import (
    AdapterReference,
    PrecomputedReference,
    Reference,
    SeparateReference,
)
from fastalign.models.reward import RewardModel, RewardScores, reward_model_from_causal_lm

__all__ = [
    "AdapterReference",
    "PackedLogprobs",
    "PolicyModel",
    "PrecomputedReference",
    "Reference",
    "RewardModel",
    "RewardScores",
    "SeparateReference",
    "TokenLogprobs",
    "enable_activation_checkpointing",
    "packed_logprobs",
    "reduce_packed",
    "reward_model_from_causal_lm",
]
