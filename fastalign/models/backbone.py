"""The packed forward every fastalign model module shares: run a Hugging Face backbone once
over a ``PackedBatch`` through fastalign's packed attention and return its final hidden states.

``PackedModel`` is the base of ``PolicyModel`` (fused log-prob head) and of the reward / value
models (scalar heads). It holds the HF model as ``self.model`` and keeps its state-dict keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fastalign.attention import (
    PACKED_KWARG,
    PREFIX,
    PackedAttention,
    is_packed_backend,
    packed_forward,
    register_backends,
    select_backend,
)
from fastalign.packing.batch import PackedBatch


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (unwraps PEFT): ``*ForCausalLM`` or
    ``*ForSequenceClassification``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_config(model: nn.Module):
    config = causal_lm(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def plain_lm_head(model: nn.Module) -> nn.Linear:
    """The LM head of ``model``; a ``ValueError`` unless it is a plain ``nn.Linear`` (the fused
    op reads ``head.weight`` directly, so an adapter on the head would be silently skipped)."""
    head = causal_lm(model).get_output_embeddings()
    if type(head) is not nn.Linear:
        raise ValueError(
            f"model's output embedding must be a plain nn.Linear (got {type(head).__name__}); "
            "adapters on the LM head are not supported"
        )
    return head


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (``LlamaModel`` & co.) of a causal LM or a sequence classifier."""
    return causal_lm(model).base_model


class PackedModel(nn.Module):
    """Base module: ``model`` (a transformers model, optionally PEFT-wrapped) run on packed rows.

    Args:
        model: its attention must go through ``AttentionInterface`` (Llama, Qwen2/3, Mistral,
            Gemma2, ...). The attention implementation is switched to a fastalign backend, which
            behaves like the built-in one outside packed forwards (generation still works).
        attention: ``"auto"`` or a backend name from ``fastalign.attention.BACKENDS``.
    """

    def __init__(self, model: nn.Module, *, attention: str = "auto") -> None:
        super().__init__()
        inner = causal_lm(model) if isinstance(model, nn.Module) else None
        if inner is None or not hasattr(inner, "base_model") or not hasattr(inner, "set_attn_implementation"):
            raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
        self.model = model
        self.attention = attention
        self._backend_device: torch.device | None = None
        register_backends()

    def _select_backend(self, device: torch.device) -> None:
        if self._backend_device == device:
            return
        needs_grad = any(parameter.requires_grad for parameter in self.model.parameters())
        backend = select_backend(causal_lm(self.model).config, device, requested=self.attention, needs_grad=needs_grad)
        causal_lm(self.model).set_attn_implementation(PREFIX + backend.name)
        self._backend_device = device

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """Final hidden states ``[T, H]`` of the packed row (after the model's last norm)."""
        if not isinstance(batch, PackedBatch):
            raise ValueError(f"batch must be a PackedBatch, got {type(batch).__name__}")
        lm = causal_lm(self.model)
        parameter = next(lm.parameters())
        if batch.device != parameter.device:
            raise ValueError(f"batch is on {batch.device} but the model is on {parameter.device}; use batch.to(...)")
        self._select_backend(parameter.device)
        implementation = lm.config._attn_implementation
        if not is_packed_backend(implementation):
            raise ValueError(
                f"the model's attention implementation is {implementation!r}: transformers' built-in "
                "attention would let rejected tokens attend to chosen ones in a packed batch"
            )
        meta = PackedAttention.from_batch(batch)
        with packed_forward():
            output = backbone(self.model)(
                input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **{PACKED_KWARG: meta}
            )
        expected = text_config(self.model).num_hidden_layers
        if meta.calls != expected:
            raise RuntimeError(
                f"{expected - meta.calls} of {expected} attention layers did not go through fastalign's packed "
                f"attention (implementation {lm.config._attn_implementation!r}); their output would mix answers"
            )
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return hidden[0]

    def state_dict(self, *args, **kwargs) -> dict[str, Any]:  # noqa: D102 - keys of the HF model
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # noqa: D102
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
