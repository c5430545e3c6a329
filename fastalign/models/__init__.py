"""Model glue: the policy module (HF causal LM + fused log-prob head), packed log-probs, and the
memory options of long rows (tiled MLP, offloaded checkpoints, sequence parallelism)."""

from fastalign.models.checkpointing import enable_activation_checkpointing
from fastalign.models.head import FusedHead, fused_head_of
from fastalign.models.offload import CheckpointOffload
from fastalign.models.policy import PackedLogprobs, PolicyModel, TokenLogprobs, packed_logprobs, reduce_packed
from fastalign.models.reference import AdapterReference, PrecomputedReference, Reference, SeparateReference
from fastalign.models.reward import RewardModel, RewardScores, reward_model_from_causal_lm
from fastalign.models.tiled_mlp import set_mlp_tiling

__all__ = [
    "AdapterReference",
    "CheckpointOffload",
    "FusedHead",
    "PackedLogprobs",
    "PolicyModel",
    "PrecomputedReference",
    "Reference",
    "RewardModel",
    "RewardScores",
    "SeparateReference",
    "TokenLogprobs",
    "enable_activation_checkpointing",
    "fused_head_of",
    "packed_logprobs",
    "reduce_packed",
    "reward_model_from_causal_lm",
    "set_mlp_tiling",
]
