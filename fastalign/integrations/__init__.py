"""Drop-in use of fastalign inside tools people already run: Hugging Face models and
``transformers.Trainer`` (``integrations.hf``) and TRL's DPO trainer (``integrations.trl``,
imported on demand because TRL is an optional extra)."""

from fastalign.integrations.hf import (
    FusedCausalLMOutput,
    fused_forward_counts,
    has_fused_head,
    paired_rows,
    remove_fused_head,
    with_fused_head,
)

__all__ = [
    "FusedCausalLMOutput",
    "fused_forward_counts",
    "has_fused_head",
    "paired_rows",
    "remove_fused_head",
    "with_fused_head",
]
