"""The packed forward every fastalign model module shares: run a Hugging Face backbone once
over a ``PackedBatch`` through fastalign's packed attention and return its final hidden states.

``PackedModel`` is the base of ``PolicyModel`` (fused log-prob head) and of the reward / value
models (scalar heads). It holds the HF model as ``self.model`` and keeps its state-dict keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fastalign.attention import (
    PACKED_KWARG,
    PREFIX,
    PackedAttention,
    SequenceParallelGroup,
    is_packed_backend,
    packed_forward,
    register_backends,
    select_backend,
)
from fastalign.models.offload import CheckpointOffload
from fastalign.models.tiled_mlp import set_mlp_tiling
from fastalign.packing.batch import PackedBatch
from fastalign.packing.padding import pad_to_multiple


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
        mlp_tile_tokens: run each decoder layer's MLP over tiles of this many tokens, so no
            ``[T, intermediate]`` activation exists whole (``fastalign.models.tiled_mlp``;
            installed on ``model``'s MLP modules). ``None``: untiled.
        offload_checkpoints: keep the checkpointed layer inputs in pinned host memory between
            forward and backward (``fastalign.models.offload``). CUDA only; needs activation
            checkpointing enabled on ``model``.
        sequence_parallel: split each row over the ranks of this group (Ulysses; see
            ``fastalign.attention.ulysses``). ``hidden_states`` then returns this rank's slice.
    """

    def __init__(self, model: nn.Module, *, attention: str = "auto", mlp_tile_tokens: int | None = None,
                 offload_checkpoints: bool = False, sequence_parallel: SequenceParallelGroup | None = None) -> None:
        super().__init__()
        inner = causal_lm(model) if isinstance(model, nn.Module) else None
        if inner is None or not hasattr(inner, "base_model") or not hasattr(inner, "set_attn_implementation"):
            raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
        if not isinstance(offload_checkpoints, bool):
            raise TypeError(f"offload_checkpoints must be a bool, got {type(offload_checkpoints).__name__}")
        if sequence_parallel is not None and not isinstance(sequence_parallel, SequenceParallelGroup):
            raise TypeError(f"sequence_parallel must be None or a SequenceParallelGroup, got "
                            f"{type(sequence_parallel).__name__}")
        if mlp_tile_tokens is not None:
            set_mlp_tiling(model, mlp_tile_tokens)  # validates mlp_tile_tokens
        self.model = model
        self.attention = attention
        self.offload_checkpoints = offload_checkpoints
        self.sequence_parallel = sequence_parallel if sequence_parallel is not None and sequence_parallel.size > 1 else None
        self._backend_device: torch.device | None = None
        self._offload_stream = None
        register_backends()

    def _offload(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Saved-tensor hooks for this forward when ``offload_checkpoints`` is on."""
        if not self.offload_checkpoints:
            return contextlib.nullcontext()
        if device.type != "cuda":
            raise ValueError(f"offload_checkpoints=True needs a CUDA device (the model is on {device.type}): it moves "
                             "checkpointed layer inputs from GPU memory to pinned host memory")
        if self._offload_stream is None or self._offload_stream.device != device:
            self._offload_stream = torch.cuda.Stream(device)  # one side stream for the copies of every step
        return self._offload_context(CheckpointOffload(device, pin_memory=True, stream=self._offload_stream))

    def _offload_context(self, offload: CheckpointOffload) -> contextlib.AbstractContextManager:
        """``offload``'s hooks when this forward saves anything; activation checkpointing required."""
        if not torch.is_grad_enabled():
            return contextlib.nullcontext()  # nothing is saved for backward
        if not any(getattr(module, "gradient_checkpointing", False) for module in causal_lm(self.model).modules()):
            raise ValueError("offload_checkpoints=True needs activation checkpointing on the model "
                             "(gradient_checkpointing=True): without it every activation would be copied")
        return offload.hooks()

    def _select_backend(self, device: torch.device) -> None:
        if self._backend_device == device:
            return
        needs_grad = any(parameter.requires_grad for parameter in self.model.parameters())
        backend = select_backend(causal_lm(self.model).config, device, requested=self.attention, needs_grad=needs_grad)
        causal_lm(self.model).set_attn_implementation(PREFIX + backend.name)
        self._backend_device = device

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """Final hidden states ``[T, H]`` of the packed row (after the model's last norm).

        Under sequence parallelism: this rank's contiguous slice ``[T' / sp, H]`` of the row
        padded to ``T'``, a multiple of the group size (``fastalign.packing.pad_to_multiple``).
        """
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
        group = self.sequence_parallel
        if group is not None:
            batch = pad_to_multiple(batch, group.size)
        meta = PackedAttention.from_batch(batch, group)
        input_ids, position_ids = batch.input_ids, batch.position_ids
        if group is not None:  # this rank's slice; attention sees the whole row after its all-to-all
            start = group.rank * meta.local_tokens
            input_ids = input_ids[:, start:start + meta.local_tokens]
            position_ids = position_ids[:, start:start + meta.local_tokens]
        with packed_forward(), self._offload(parameter.device):
            output = backbone(self.model)(
                input_ids=input_ids, position_ids=position_ids, use_cache=False, **{PACKED_KWARG: meta}
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
