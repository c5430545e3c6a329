"""The policy module: a Hugging Face causal LM and the fused log-prob head in one ``nn.Module``.

Its forward takes a ``PackedBatch``, runs the decoder once over the packed row (prompt shared
by both answers), gathers only the hidden rows the label index names and feeds them to
``linear_logprobs`` through the model's ``FusedHead`` (weight, bias, final soft-cap and logit
scale, read by ``fastalign.models.head``) — full-vocabulary logits never exist. DDP / FSDP2
wrap this module, so their hooks see the LM-head weight used inside the forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fastalign.attention.ulysses import SequenceParallelGroup
from fastalign.losses.sequence import sequence_logps
from fastalign.models.backbone import PackedModel, causal_lm
from fastalign.models.head import fused_head_of
from fastalign.models.sequence_parallel import local_labels, sum_over_group
from fastalign.packing.batch import PackedBatch


class TokenLogprobs(NamedTuple):
    logprobs: torch.Tensor  # fp32 [M], one per label row of the batch
    entropy: torch.Tensor | None  # fp32 [M] when asked for


class PackedLogprobs(NamedTuple):
    """Per-example results of one packed row (``E`` examples, ``M`` scored tokens)."""

    chosen: torch.Tensor  # fp32 [E] summed log-probs of the chosen answer
    rejected: torch.Tensor  # fp32 [E] (0 in completion mode)
    chosen_tokens: torch.Tensor  # int64 [E]
    rejected_tokens: torch.Tensor  # int64 [E]
    example_index: torch.Tensor  # int64 [E] index in the packer's input lists
    token_logprobs: torch.Tensor  # fp32 [M]
    token_entropy: torch.Tensor | None  # fp32 [M] when asked for


class PolicyModel(PackedModel):
    """``model`` (HF causal LM, optionally PEFT-wrapped) + fused log-prob head.

    Args:
        model: a transformers causal LM whose attention goes through ``AttentionInterface``
            (Llama, Qwen2/3, Mistral, Gemma2, ...). Its attention implementation is switched
            to a fastalign backend, which behaves like the built-in one outside packed forwards.
            Its LM head must be a plain ``nn.Linear``; a final-logit soft-cap (Gemma 2) and a
            logit scale (Cohere, Granite) are applied as in the model's own forward, a logit
            scale together with an LM-head bias is refused (``fastalign.models.head``).
        attention: ``"auto"`` or a backend name from ``fastalign.attention.BACKENDS``.
        mlp_tile_tokens, offload_checkpoints: memory options (see ``PackedModel``): tile each
            decoder layer's MLP over this many tokens; keep checkpointed layer inputs in pinned
            host memory (CUDA, with activation checkpointing).
        sequence_parallel: split each row over this group's ranks (Ulysses). Each rank scores
            the labels of its slice; the per-token results are summed over the group, so every
            rank returns the whole row's log-probs. Parameter gradients are then this rank's
            part: sum them over the group (the trainer's DDP does).

    ``state_dict()`` / ``load_state_dict()`` use the keys of ``model``.
    """

    def __init__(self, model: nn.Module, *, attention: str = "auto", mlp_tile_tokens: int | None = None,
                 offload_checkpoints: bool = False, sequence_parallel: SequenceParallelGroup | None = None) -> None:
        super().__init__(model, attention=attention, mlp_tile_tokens=mlp_tile_tokens,
                         offload_checkpoints=offload_checkpoints, sequence_parallel=sequence_parallel)
        fused_head_of(model)  # refuse an unsupported head now rather than at the first forward

    def forward(self, batch: PackedBatch, *, temperature: float = 1.0, return_entropy: bool = False) -> TokenLogprobs:
        """Log-probs (fp32 ``[M]``) of ``batch.targets``, and entropies when asked for."""
        hidden = self.hidden_states(batch)
        group = self.sequence_parallel
        if group is None:
            rows, targets = hidden.index_select(0, batch.label_index), batch.targets
        else:
            positions, local_rows = local_labels(batch, group, hidden.shape[0])
            rows, targets = hidden.index_select(0, local_rows), batch.targets.index_select(0, positions)
        # Read at each forward, not cached at init: FSDP2 swaps in the unsharded weight around it.
        result = fused_head_of(self.model).logprobs(rows, targets, temperature=temperature,
                                                    return_entropy=return_entropy)
        logprobs, entropy = (result.logprobs, result.entropy) if return_entropy else (result, None)
        if group is not None:  # each label was scored on exactly one rank: the sum is the row's [M]
            labels = batch.label_index.shape[0]
            logprobs = sum_over_group(logprobs.new_zeros(labels).index_add(0, positions, logprobs), group)
            if entropy is not None:
                entropy = sum_over_group(entropy.new_zeros(labels).index_add(0, positions, entropy), group)
        return TokenLogprobs(logprobs, entropy)


def reduce_packed(batch: PackedBatch, tokens: TokenLogprobs) -> PackedLogprobs:
    """Sum token log-probs per (example, chosen | rejected) with one ``index_add``."""
    num_examples = batch.num_examples
    segment = batch.label_example * 2 + (batch.label_segment.long() - 1)
    sums = sequence_logps(tokens.logprobs, segment_ids=segment, num_sequences=2 * num_examples)
    per_answer, counts = sums.sums.view(num_examples, 2), sums.counts.view(num_examples, 2)
    return PackedLogprobs(
        chosen=per_answer[:, 0], rejected=per_answer[:, 1],
        chosen_tokens=counts[:, 0], rejected_tokens=counts[:, 1],
        example_index=batch.example_index, token_logprobs=tokens.logprobs, token_entropy=tokens.entropy,
    )


def packed_logprobs(
    model: nn.Module,
    batch: PackedBatch,
    *,
    attention: str = "auto",
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> PackedLogprobs:
    """Per-example chosen / rejected log-prob sums of a packed row.

    Args:
        model: a ``PolicyModel`` or a plain transformers causal LM (its attention implementation
            is restored afterwards).
        batch: one ``PackedBatch`` on the model's device.
        attention: backend for a plain model (``PolicyModel`` keeps its own).
    """
    if isinstance(model, PolicyModel):
        return reduce_packed(batch, model(batch, temperature=temperature, return_entropy=return_entropy))
    lm = causal_lm(model) if isinstance(model, nn.Module) else None
    original = getattr(getattr(lm, "config", None), "_attn_implementation", None)
    policy = PolicyModel(model, attention=attention)
    try:
        return reduce_packed(batch, policy(batch, temperature=temperature, return_entropy=return_entropy))
    finally:
        if original is not None and lm.config._attn_implementation != original:
            lm.set_attn_implementation(original)
