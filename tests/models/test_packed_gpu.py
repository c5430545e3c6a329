"""GPU-only checks of the packed attention backends: FlexAttention gradients (its backward
does not exist on CPU) and every CUDA backend in fp32 against separate unpacked forwards,
plus bf16 forwards against the fp32 reference. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from fastalign.attention import BACKENDS, ModelRequirements
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.packing import pack_preference_examples
from tests.models.tiny_models import example_lists, reference_answer_logp, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _usable(name: str, family: str) -> bool:
    backend = BACKENDS[name]
    requirements = ModelRequirements.of(tiny_model(family).config)
    return backend.unsupported(requirements, torch.device("cuda"), needs_grad=True) is None


def _reference(model, prompts, answers):
    return torch.stack([reference_answer_logp(model, p, a) for p, a in zip(prompts, answers)])


@pytest.mark.parametrize("family", ["llama", "gemma2", "mistral"])
@pytest.mark.parametrize("attention", ["flex", "flash", "torch_varlen", "sdpa"])
def test_backend_forward_and_gradients_fp32(family, attention):
    if not _usable(attention, family):
        pytest.skip(f"{attention} cannot run {family} here")
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    reference = tiny_model(family).cuda()
    ref_c = _reference(reference, prompts, chosen)
    ref_r = _reference(reference, prompts, rejected)
    (ref_c - 0.5 * ref_r).sum().backward()

    model = tiny_model(family).cuda()
    out = packed_logprobs(PolicyModel(model, attention=attention), row.to("cuda"))
    order = out.example_index
    torch.testing.assert_close(out.chosen, ref_c.detach()[order], atol=1e-3, rtol=0)
    torch.testing.assert_close(out.rejected, ref_r.detach()[order], atol=1e-3, rtol=0)
    (out.chosen - 0.5 * out.rejected).sum().backward()
    for (name, expected), (_, got) in zip(reference.named_parameters(), model.named_parameters()):
        error = (got.grad - expected.grad).norm() / expected.grad.norm().clamp_min(1e-12)
        assert error < 1e-2, f"{family}/{attention}: gradient of {name} off by {error:.2e}"


@pytest.mark.parametrize("attention", ["flex", "flash", "torch_varlen", "sdpa"])
def test_backend_bf16_forward_close_to_fp32(attention):
    if not _usable(attention, "llama"):
        pytest.skip(f"{attention} not available")
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    model = tiny_model("llama").cuda()
    with torch.no_grad():
        expected = _reference(model, prompts, chosen)
        out = packed_logprobs(PolicyModel(model.to(torch.bfloat16), attention=attention), row.to("cuda"))
    # bf16 weights and activations: ~3 significant digits per token, sums of <= 8 tokens.
    torch.testing.assert_close(out.chosen, expected[out.example_index], atol=0.5, rtol=0.05)
