"""Losses on log-probs (pure functions) and fused drop-in layers (hidden states in)."""

from fastalign.losses.aggregation import AGGREGATIONS, aggregate
from fastalign.losses.fused import (
    FusedLinearCPOLoss,
    FusedLinearDPOLoss,
    FusedLinearORPOLoss,
    FusedLinearSimPOLoss,
)
from fastalign.losses.fused_kto import FusedLinearKTOLoss
from fastalign.losses.fused_rl import FusedLinearGRPOLoss, FusedLinearPPOLoss
from fastalign.losses.kto import KTO_LOSS_TYPES, kto_kl_estimate, kto_loss
from fastalign.losses.outputs import PreferenceLossOutput
from fastalign.losses.preference import LOSS_TYPES, chosen_nll, dpo_loss
from fastalign.losses.reference_free import cpo_loss, orpo_loss, simpo_loss
from fastalign.losses.reward import bradley_terry_loss, sft_loss
from fastalign.losses.rl import (
    PolicyLossOutput,
    entropy_bonus,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_estimate,
    ppo_policy_loss,
    value_loss,
    whiten,
)
from fastalign.losses.sequence import SequenceLogps, segment_ids_from_cu_seqlens, sequence_logps

__all__ = [
    "FusedLinearCPOLoss", "FusedLinearDPOLoss", "FusedLinearGRPOLoss", "FusedLinearKTOLoss",
    "FusedLinearORPOLoss", "FusedLinearPPOLoss", "FusedLinearSimPOLoss",
    "AGGREGATIONS", "KTO_LOSS_TYPES", "LOSS_TYPES", "PolicyLossOutput", "PreferenceLossOutput",
    "SequenceLogps", "aggregate", "bradley_terry_loss", "chosen_nll", "cpo_loss", "dpo_loss",
    "entropy_bonus", "gae", "grpo_advantages", "grpo_loss", "kl_estimate", "kto_kl_estimate",
    "kto_loss", "orpo_loss", "ppo_policy_loss", "segment_ids_from_cu_seqlens", "sequence_logps",
    "sft_loss", "simpo_loss", "value_loss", "whiten",
]
