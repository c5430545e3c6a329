"""FusedHead: one reading of a causal LM's head (weight, bias, soft-cap, logit scale), applied
the same way by PolicyModel, the HF fused head and the fused loss layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import CohereConfig, CohereForCausalLM

from fastalign.integrations.hf import with_fused_head
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.models.head import FusedHead, fused_head_of, logit_scale
from fastalign.packing import pack_preference_examples
from tests.models.tiny_models import _COMMON, VOCAB, example_lists, tiny_model

LOGIT_SCALE = 0.25


def tiny_cohere(seed: int = 0) -> nn.Module:
    """A Cohere model (tied head, ``logit_scale``), scaled up like ``tiny_model``'s."""
    torch.manual_seed(seed)
    # Cohere's default special ids lie outside a 61-token vocabulary.
    config = CohereConfig(**_COMMON, logit_scale=LOGIT_SCALE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = CohereForCausalLM(config).float()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(4.0)
    return model.eval()


def test_reads_weight_bias_softcap_and_scale_from_each_family():
    llama = tiny_model("llama")
    head = fused_head_of(llama)
    assert head.weight is llama.lm_head.weight and head.bias is None
    assert head.softcap is None and head.logit_scale == 1.0

    gemma = tiny_model("gemma2")
    head = fused_head_of(gemma)
    assert head.weight is gemma.lm_head.weight and head.softcap == 3.0 and head.logit_scale == 1.0

    cohere = tiny_cohere()
    head = fused_head_of(cohere)
    # Tied embeddings: the head reads the input embedding matrix itself (gradients reach it).
    assert head.weight is cohere.model.embed_tokens.weight
    assert head.softcap is None and head.logit_scale == LOGIT_SCALE

    llama.lm_head = nn.Linear(32, VOCAB, bias=True)
    assert fused_head_of(llama).bias is llama.lm_head.bias


def test_logit_scale_names_of_other_families():
    class Config:
        model_type = "granite"
        logits_scaling = 8.0

    assert logit_scale(Config()) == 1 / 8  # Granite divides by it
    Config.model_type = "hyperclovax"
    assert logit_scale(Config()) == 8.0  # ... HyperCLOVA X multiplies


def test_unsupported_heads_are_refused():
    model = tiny_model("llama")
    model.lm_head = nn.Linear(32, VOCAB, bias=True)
    model.config.logit_scale = 2.0
    with pytest.raises(ValueError, match="a logit scale with an LM-head bias is not supported"):
        fused_head_of(model)
    with pytest.raises(ValueError, match="a logit scale with an LM-head bias is not supported"):
        PolicyModel(model)
    with pytest.raises(ValueError, match="logit_scale must be a finite number"):
        FusedHead(model.lm_head.weight, logit_scale=float("nan"))
    model.lm_head = nn.Sequential(nn.Linear(32, VOCAB))
    with pytest.raises(ValueError, match="adapters on the LM head are not supported"):
        fused_head_of(model)


def test_head_scores_scaled_then_capped_logits():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 40, (3, 5), generator=gen)
    targets[1, 2] = -100
    head = FusedHead(weight, softcap=2.0, logit_scale=0.5)
    out = head.logprobs(hidden, targets, temperature=0.7, return_entropy=True)
    z = 2.0 * torch.tanh(0.5 * (hidden @ weight.T) / 2.0) / 0.7
    logp = z.log_softmax(-1)
    expected = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0].masked_fill(targets == -100, 0)
    torch.testing.assert_close(out.logprobs, expected)
    ignored = targets == -100  # every output is 0 there
    torch.testing.assert_close(out.entropy, -(logp.exp() * logp).sum(-1).masked_fill(ignored, 0))
    sum_sq = head.log_sum_sq_probs(hidden, targets, temperature=0.7)
    torch.testing.assert_close(sum_sq, (2 * logp).logsumexp(-1).masked_fill(ignored, 0))


def _reference_logp64(model: nn.Module, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Summed log-prob of ``answer`` from the float64 copy's own logits (its forward applies the
    logit scale and soft-cap itself)."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids, use_cache=False).logits[0]
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
    return logits[rows].log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum()


def test_policy_model_applies_the_logit_scale(one_thread):
    model = tiny_cohere()
    reference = copy.deepcopy(model).double()
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    out = packed_logprobs(PolicyModel(model), row)
    with torch.no_grad():
        expected_chosen = torch.stack([_reference_logp64(reference, p, c) for p, c in zip(prompts, chosen)])
        expected_rejected = torch.stack([_reference_logp64(reference, p, r) for p, r in zip(prompts, rejected)])
    order = out.example_index
    torch.testing.assert_close(out.chosen.double(), expected_chosen[order], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.rejected.double(), expected_rejected[order], rtol=1e-4, atol=1e-4)
    # The scale matters here: without it the log-probs differ by far more than the tolerance.
    unscaled = copy.deepcopy(reference)
    unscaled.logit_scale = 1.0
    with torch.no_grad():
        assert not torch.allclose(_reference_logp64(unscaled, prompts[0], chosen[0]),
                                  expected_chosen[0], atol=1e-2)


def test_hf_fused_head_applies_the_logit_scale(one_thread):
    model = tiny_cohere()
    ids = torch.tensor([[5, 9, 2, 17, 33, 8, 4, 40]])
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss
        fused = with_fused_head(model)(input_ids=ids, labels=labels)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, expected, rtol=1e-5, atol=1e-5)
