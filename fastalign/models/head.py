"""Read a Hugging Face causal LM's LM head into a ``FusedHead`` (``fastalign.ops.head``).

The one place that knows where transformers keeps what the fused op needs: the head's weight
and bias (``get_output_embeddings()``, a plain ``nn.Linear``), the final-logit soft-cap
(``final_logit_softcapping``: Gemma 2) and the logit scale (Cohere, Granite, ...). Every fused
path that starts from a model — ``PolicyModel`` and the HF fused head — builds its head here,
so they score exactly the logits the model's own forward would produce.
"""

from __future__ import annotations

from torch import nn

from fastalign.models.backbone import plain_lm_head, text_config
from fastalign.ops.head import FusedHead

__all__ = ["FusedHead", "fused_head_of", "logit_scale"]


def logit_scale(config) -> float:
    """The factor some families put on the LM-head output before the soft-cap (1.0: none).

    ``logit_scale`` (Cohere), ``output_multiplier`` / ``lm_head_multiplier`` multiply;
    ``logits_scaling`` (Granite) divides — except in HyperCLOVA X, whose forward multiplies by it.
    """
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if config.model_type == "hyperclovax" else 1.0 / float(scaling)
    return 1.0


def fused_head_of(model: nn.Module) -> FusedHead:
    """The ``FusedHead`` of ``model`` (a transformers causal LM, optionally PEFT-wrapped).

    Holds the head's live parameters (not copies), so build it in each forward: DDP / FSDP and
    optimizers see the weight the op reads. Raises ``ValueError`` when the head is not a plain
    ``nn.Linear`` (an adapter on it would be skipped) or has both a bias and a logit scale.
    """
    head = plain_lm_head(model)
    config = text_config(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    return FusedHead(head.weight, head.bias, softcap=None if softcap is None else float(softcap),
                     logit_scale=logit_scale(config))
