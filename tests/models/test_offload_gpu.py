"""Offloaded checkpoints on a GPU: pinned host buffers and side-stream copies give the same loss
and gradients bit for bit, and the layer inputs leave GPU memory between forward and backward.
Run by bench/gpu_check.sh; skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastalign.models import PolicyModel, enable_activation_checkpointing, packed_logprobs
from fastalign.packing import pack_preference_examples

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LAYERS, HIDDEN = 4, 256


def _model(checkpointing: bool = True):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=16384)
    model = LlamaForCausalLM(config).cuda().train()
    if checkpointing:
        enable_activation_checkpointing(model)
    return model


def _row(tokens: int = 8000):
    generator = torch.Generator().manual_seed(0)
    prompt, answer = 3 * tokens // 5, tokens // 5
    parts = [torch.randint(0, 1000, (size,), generator=generator).tolist() for size in (prompt, answer, answer)]
    (row,) = pack_preference_examples(*[[part] for part in parts], token_budget=tokens)
    return row.to("cuda")


def _forward(offload: bool):
    model = _model()
    out = packed_logprobs(PolicyModel(model, offload_checkpoints=offload), _row())
    loss = (out.chosen - 0.5 * out.rejected).sum()
    torch.cuda.synchronize()
    return model, loss, torch.cuda.memory_allocated()


def test_offload_gives_identical_gradients_and_frees_the_layer_inputs():
    results = {}
    for offload in (False, True):
        model, loss, held = _forward(offload)
        loss.backward()
        results[offload] = (loss.detach(), [p.grad.clone() for p in model.parameters()], held)
        del model, loss
        torch.cuda.empty_cache()
    (plain_loss, plain_grads, plain_held), (loss, grads, held) = results[False], results[True]
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))
    layer_inputs = LAYERS * _row().num_tokens * HIDDEN * 4  # fp32 [T, H] per layer
    assert plain_held - held >= 0.9 * layer_inputs, (plain_held, held, layer_inputs)


def test_offload_needs_activation_checkpointing_on_cuda():
    policy = PolicyModel(_model(checkpointing=False), offload_checkpoints=True)
    with pytest.raises(ValueError, match="needs activation checkpointing"):
        policy(_row(64))
