"""Activation (gradient) checkpointing across transformers releases.

transformers 5.24 renamed ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=)`` to
``activation_checkpointing_enable(activation_checkpointing_kwargs=)`` and deprecated the old
name; 5.17 has only the old one. Detect which exists instead of pinning a version.
"""

from __future__ import annotations

from torch import nn


def enable_activation_checkpointing(model: nn.Module, *, use_reentrant: bool = False) -> None:
    """Recompute each decoder layer in backward; non-reentrant by default (works with
    frozen inputs, PEFT and keyword arguments such as the packed-attention metadata)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    options = {"use_reentrant": use_reentrant}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    elif hasattr(lm, "gradient_checkpointing_enable"):
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        raise ValueError(f"{type(lm).__name__} supports neither activation nor gradient checkpointing")
