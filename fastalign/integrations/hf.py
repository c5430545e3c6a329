"""``with_fused_head(model)``: a Hugging Face causal LM whose ``labels=`` loss and per-token
log-probs go through fastalign's fused op — no ``[batch, length, vocab]`` logits.

Explicit and per model: the instance's ``forward`` is replaced (the class and every other
model are untouched), ``remove_fused_head(model)`` puts it back, and calls without labels run
the original forward, so ``generate`` is unchanged. The replacement also serves TRL 1.16's
fused-head contract (``model(..., labels=labels, fused_lm_head=True)`` returning
``log_probs``, ``entropy``, ``mean_logits``, ``is_top1``, ``log_sum_sq_probs``), which is how
``fastalign.integrations.trl.DPOTrainer`` plugs in.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from fastalign.integrations.pairs import pack_pairs, scatter_to_padded, split_pairs
from fastalign.models.backbone import PackedModel, backbone, causal_lm
from fastalign.models.head import fused_head_of
from fastalign.packing import PackedBatch

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
_STATE = "_fastalign_fused_head"


@dataclass
class _PairedScope:
    """One ``paired_rows()`` block: the last batch it packed, so the policy and the reference
    forward of a step share one ``PackedBatch`` (the inputs are the very same tensors)."""

    inputs: tuple = ()
    batch: PackedBatch | None = None  # None: the inputs cannot share prompts

    def packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               labels: torch.Tensor) -> PackedBatch | None:
        inputs = (input_ids, attention_mask, labels)
        if len(self.inputs) != 3 or any(a is not b for a, b in zip(inputs, self.inputs)):
            pairs = split_pairs(input_ids, attention_mask, labels)
            self.inputs = inputs  # held, so the identities above cannot be reused by new tensors
            self.batch = None if isinstance(pairs, str) else pack_pairs(pairs, input_ids.device)
        return self.batch


_paired_rows: contextvars.ContextVar[_PairedScope | None] = contextvars.ContextVar("fastalign_paired_rows",
                                                                                   default=None)


@contextlib.contextmanager
def paired_rows() -> Iterator[None]:
    """Within this block, a fused forward may read its rows as ``[chosen; rejected]`` halves
    and encode each shared prompt once (it checks that the batch really has that shape)."""
    token = _paired_rows.set(_PairedScope())
    try:
        yield
    finally:
        _paired_rows.reset(token)


@dataclass
class FusedCausalLMOutput(ModelOutput):
    """Output of a fused-head forward called with labels. Per-token fields are fp32 (bool for
    ``is_top1``), shaped like the shifted labels ``[batch, length - 1]`` (``[batch, length]``
    with ``shift_labels``), zero where the label is ``-100``; fields not requested are ``None``.

    ``loss`` is ``-sum(log_probs) / num_items_in_batch`` (the count of scored tokens when not
    given) — the model's own ``labels=`` loss at temperature 1. ``logits`` is always ``None``.
    ``mean_logits``, ``is_top1`` and ``log_sum_sq_probs`` carry no gradient.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    shared_prompts: bool | None = None  # True when each prompt was encoded once


@dataclass
class _HeadSettings:
    original_forward: Any
    temperature: float
    outputs: tuple[str, ...]
    share_prompts: bool
    attention: str
    packed: PackedModel | None = None
    shared_forwards: int = 0  # fused forwards that encoded each prompt once
    padded_forwards: int = 0


def _checked_causal_lm(model: nn.Module) -> nn.Module:
    """``causal_lm(model)`` (PEFT unwrapped), refused with a ``ValueError`` unless it has an
    output embedding and a decoder as its ``base_model`` — what the patched forward needs."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a transformers causal LM (nn.Module), got {type(model).__name__}")
    inner = causal_lm(model)
    if not hasattr(inner, "get_output_embeddings") or inner.get_output_embeddings() is None:
        raise ValueError(f"model must be a causal LM with an output embedding, got {type(inner).__name__}")
    if not hasattr(inner, "base_model") or inner.base_model is inner:
        raise ValueError(f"model must hold a decoder as its base_model, got {type(inner).__name__}")
    return inner


def _check_outputs(outputs: Any) -> tuple[str, ...]:
    if isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"outputs must be a tuple of names from {OUTPUTS}, got {outputs!r}")
    unknown = [name for name in outputs if name not in OUTPUTS]
    if unknown:
        raise ValueError(f"outputs has unknown names {unknown}; choose from {OUTPUTS}")
    return tuple(dict.fromkeys(("log_probs", *outputs)))


def with_fused_head(
    model: nn.Module,
    *,
    temperature: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
    share_prompts: bool = True,
    attention: str = "auto",
) -> nn.Module:
    """Route ``model``'s ``labels=`` loss and per-token log-probs through the fused op.

    Args:
        model: a transformers causal LM, optionally PEFT-wrapped (the base model is patched, so
            adapters, gradient checkpointing and DDP/FSDP wrapping keep working). Its LM head
            must be a plain ``nn.Linear`` (no adapter on the head).
        temperature: logits are divided by it before the softmax (1: the model's own loss).
        outputs: per-token fields to compute besides ``log_probs``: ``"entropy"``,
            ``"mean_logits"``, ``"is_top1"``, ``"log_sum_sq_probs"`` (the last one costs an
            extra no-grad pass over the vocabulary).
        share_prompts: inside ``paired_rows()`` (the TRL integration), encode each prompt
            once for its two answers when the batch allows it.
        attention: packed attention backend for shared prompts (``"auto"`` or a name in
            ``fastalign.attention.BACKENDS``).

    Returns:
        ``model`` itself. Calls with ``labels`` (or ``shift_labels``) return a
        ``FusedCausalLMOutput``; ``fused_lm_head=False`` forces the original forward;
        calls without labels run the original forward. Calling it again updates the settings.
    """
    inner = _checked_causal_lm(model)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    outputs = _check_outputs(outputs)
    if not isinstance(share_prompts, bool):
        raise ValueError(f"share_prompts must be a bool, got {share_prompts!r}")
    if not isinstance(attention, str):
        raise ValueError(f"attention must be a backend name, got {attention!r}")
    previous: _HeadSettings | None = inner.__dict__.get(_STATE)
    settings = _HeadSettings(
        original_forward=previous.original_forward if previous else inner.forward,
        temperature=float(temperature), outputs=outputs, share_prompts=share_prompts, attention=attention,
    )
    object.__setattr__(inner, _STATE, settings)  # a plain attribute: not a submodule, not in the state dict
    signature = inspect.signature(type(inner).forward)

    @functools.wraps(type(inner).forward)  # generate() and Trainer inspect this signature
    def forward(self, *args, labels=None, shift_labels=None, fused_lm_head=None, num_items_in_batch=None, **kwargs):
        state: _HeadSettings = self.__dict__[_STATE]
        if fused_lm_head is False or (labels is None and shift_labels is None):
            for name, value in (("labels", labels), ("shift_labels", shift_labels),
                                ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[name] = value
            return state.original_forward(*args, **kwargs)
        if args:
            kwargs.update(signature.bind_partial(self, *args).arguments)
            kwargs.pop("self")
        return _fused_forward(self, state, labels, shift_labels, num_items_in_batch, kwargs)

    inner.forward = types.MethodType(forward, inner)
    return model


def remove_fused_head(model: nn.Module) -> nn.Module:
    """Undo ``with_fused_head`` (a model without the head is returned unchanged)."""
    inner = _checked_causal_lm(model)
    settings: _HeadSettings | None = inner.__dict__.pop(_STATE, None)
    if settings is not None:
        inner.__dict__.pop("forward", None)
        if inner.forward != settings.original_forward:  # it was an instance attribute before us
            inner.forward = settings.original_forward
    return model


def has_fused_head(model: nn.Module) -> bool:
    return _STATE in _checked_causal_lm(model).__dict__


def fused_forward_counts(model: nn.Module) -> tuple[int, int]:
    """``(shared, padded)``: how many fused forwards of ``model`` shared prompts, and how many
    ran on the padded batch."""
    state: _HeadSettings | None = _checked_causal_lm(model).__dict__.get(_STATE)
    if state is None:
        raise ValueError("model has no fused head (see with_fused_head)")
    return state.shared_forwards, state.padded_forwards


def _token_stats(model: nn.Module, state: _HeadSettings, hidden: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-token fields for ``hidden [..., H]`` and ``targets [...]`` (-100 = not scored)."""
    head = fused_head_of(model)  # weight, bias, final soft-cap and logit scale, as the model applies them
    # With a device map the decoder's last layer and the LM head may sit on different devices.
    hidden = hidden.to(head.weight.device)
    targets = targets.to(head.weight.device)
    wanted = state.outputs
    stats = head.stats(
        hidden, targets, temperature=state.temperature,
        with_entropy="entropy" in wanted, with_logit_sum="mean_logits" in wanted,
        with_max_logit="is_top1" in wanted,
    )
    mask = targets != -100
    fields = {"log_probs": stats.logprobs, "label_mask": mask}
    if "entropy" in wanted:
        fields["entropy"] = stats.entropy
    if "mean_logits" in wanted:
        fields["mean_logits"] = (stats.logit_sum / head.weight.shape[0]).detach()
    if "is_top1" in wanted:
        target_logit = (stats.logprobs + stats.lse).detach()
        # target_logit is rebuilt as logp + lse: allow the few ulps that round trip costs.
        slack = 4 * torch.finfo(torch.float32).eps * (stats.lse.detach().abs() + stats.max_logit.abs() + 1)
        fields["is_top1"] = (target_logit >= stats.max_logit - slack) & mask
    if "log_sum_sq_probs" in wanted:
        fields["log_sum_sq_probs"] = head.log_sum_sq_probs(
            hidden, targets, ignore_index=-100, temperature=state.temperature,
        ).to(stats.logprobs.dtype)
    return fields


def _shared_prompt_fields(model, state, kwargs, labels) -> dict | None:
    """Per-token fields from one prefix-shared packed row, or ``None`` when the batch can't."""
    scope = _paired_rows.get()
    if not state.share_prompts or scope is None or labels is None:
        return None
    extra = set(kwargs) - {"input_ids", "attention_mask", "use_cache"}
    input_ids = kwargs.get("input_ids")
    if extra or input_ids is None:
        return None
    batch = scope.packed(input_ids, kwargs.get("attention_mask"), labels)
    if batch is None:
        return None
    if state.packed is None:
        # Unpacked calls (generate, padded batches) keep the implementation the user chose: the
        # fastalign backend hands them to its built-in twin, so pick the twin of the current one.
        implementation = getattr(model.config, "_attn_implementation", None)
        twins = {"eager": "eager", "flash_attention_2": "flash"}
        attention = twins.get(implementation, "auto") if state.attention == "auto" else state.attention
        state.packed = PackedModel(model, attention=attention)
    hidden = state.packed.hidden_states(batch)
    rows = hidden.index_select(0, batch.label_index)
    fields = _token_stats(model, state, rows, batch.targets)
    label_mask = labels[:, 1:] != -100
    padded = {
        name: scatter_to_padded(batch, value, label_mask)
        for name, value in fields.items() if name != "label_mask"
    }
    padded["label_mask"] = label_mask
    return padded


def _fused_forward(model, state, labels, shift_labels, num_items_in_batch, kwargs) -> FusedCausalLMOutput:
    if kwargs.get("output_router_logits") or getattr(model.config, "output_router_logits", False):
        raise ValueError("the fused head does not compute MoE router losses; use the model's own forward")
    kwargs["use_cache"] = False
    kwargs.pop("logits_to_keep", None)
    kwargs.pop("return_dict", None)
    fields = _shared_prompt_fields(model, state, kwargs, labels) if shift_labels is None else None
    shared = fields is not None
    if shared:
        state.shared_forwards += 1
    else:
        state.padded_forwards += 1
        decoder_output = backbone(model)(**kwargs)
        hidden = decoder_output.last_hidden_state if hasattr(decoder_output, "last_hidden_state") else decoder_output[0]
        if shift_labels is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        fields = _token_stats(model, state, hidden, targets)
    log_probs, mask = fields["log_probs"], fields["label_mask"]
    if num_items_in_batch is None:
        denominator = mask.sum().clamp(min=1)
    elif isinstance(num_items_in_batch, torch.Tensor):
        denominator = num_items_in_batch.to(log_probs.device)
    else:
        denominator = num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, shared_prompts=shared, **fields)
