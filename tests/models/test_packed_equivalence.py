"""Packed prefix-shared log-probs == separate unpacked HF forwards, per model family.

fp32 throughout. Tolerance: per-example sums of <= 8 token log-probs; a wrong mask (R seeing C,
a window off by one, a missing softcap) moves them by ~1e-1 with these weights, while the
fp32 reordering of the same computation stays below ~1e-5 per token.
"""

from __future__ import annotations

import pytest
import torch

from fastalign.models import PolicyModel, packed_logprobs
from fastalign.packing import PackedBatch, pack_completion_examples, pack_preference_examples
from tests.models.tiny_models import FAMILIES, example_lists, per_example, reference_answer_logp, tiny_model

ATOL = 1e-4
GRAD_RTOL = 1e-4


def _reference(model, prompts, chosen, rejected):
    ref_c = torch.stack([reference_answer_logp(model, p, c) for p, c in zip(prompts, chosen)])
    ref_r = torch.stack([reference_answer_logp(model, p, r) for p, r in zip(prompts, rejected)])
    return ref_c, ref_r


def _packed(model, rows, attention, num_examples):
    return per_example(rows, lambda row: packed_logprobs(model, row, attention=attention), num_examples)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("share_prompt", [True, False])
def test_packed_forward_matches_unpacked(family, share_prompt):
    model = tiny_model(family)
    prompts, chosen, rejected = example_lists()
    rows = pack_preference_examples(prompts, chosen, rejected, token_budget=30, share_prompt=share_prompt)
    assert len(rows) >= 2, "the budget should force several rows"
    with torch.no_grad():
        ref_c, ref_r = _reference(model, prompts, chosen, rejected)
        got_c, got_r = _packed(model, rows, "auto", len(prompts))
    torch.testing.assert_close(got_c, ref_c, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_r, ref_r, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_gradients_match_unpacked(family):
    prompts, chosen, rejected = example_lists()
    weights = torch.tensor([1.0, -0.5, 0.25, 2.0])

    reference = tiny_model(family)
    ref_c, ref_r = _reference(reference, prompts, chosen, rejected)
    (weights * (ref_c - 0.3 * ref_r)).sum().backward()

    model = tiny_model(family)
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    out = packed_logprobs(PolicyModel(model), row)
    order = out.example_index
    (weights[order] * (out.chosen - 0.3 * out.rejected)).sum().backward()

    for (name, expected), (_, got) in zip(reference.named_parameters(), model.named_parameters()):
        error = (got.grad - expected.grad).norm() / expected.grad.norm().clamp_min(1e-12)
        assert error < GRAD_RTOL, f"{family}: gradient of {name} off by {error:.2e}"


def test_mutation_twin_rejected_seeing_chosen_is_detected():
    """If R could attend to C the result must change: the tolerance above cannot hide it."""
    model = tiny_model("llama")
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    leaky = PackedBatch(**{**row.__dict__, "segment_ids": torch.where(row.segment_ids == 2, 1, row.segment_ids).to(torch.int8)})
    with torch.no_grad():
        _, ref_r = _reference(model, prompts, chosen, rejected)
        out = packed_logprobs(model, leaky)
    assert (out.rejected - ref_r[out.example_index]).abs().max() > 100 * ATOL


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex"])
def test_backends_agree_on_cpu_forward(attention):
    """Every CPU-capable backend gives the reference forward (flex: forward only on CPU)."""
    model = tiny_model("llama").requires_grad_(attention != "flex")
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    with torch.no_grad():
        ref_c, ref_r = _reference(model, prompts, chosen, rejected)
        out = packed_logprobs(model, row, attention=attention)
    torch.testing.assert_close(out.chosen, ref_c[out.example_index], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected, ref_r[out.example_index], atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_with_softcap_and_window_forward():
    model = tiny_model("gemma2").requires_grad_(False)
    prompts, chosen, rejected = example_lists()
    (row,) = pack_preference_examples(prompts, chosen, rejected, token_budget=128)
    with torch.no_grad():
        ref_c, ref_r = _reference(model, prompts, chosen, rejected)
        out = packed_logprobs(model, row, attention="flex")
    torch.testing.assert_close(out.chosen, ref_c[out.example_index], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected, ref_r[out.example_index], atol=ATOL, rtol=0)


def test_completion_mode_matches_unpacked():
    model = tiny_model("qwen3")
    prompts, chosen, _ = example_lists()
    (row,) = pack_completion_examples(prompts, chosen, token_budget=128)
    with torch.no_grad():
        out = packed_logprobs(model, row)
        expected = torch.stack([reference_answer_logp(model, p, c) for p, c in zip(prompts, chosen)])
    torch.testing.assert_close(out.chosen, expected[out.example_index], atol=ATOL, rtol=0)
    assert torch.equal(out.rejected, torch.zeros_like(out.rejected))
    assert out.chosen_tokens.tolist() == [len(chosen[i]) for i in out.example_index.tolist()]


def test_cat_of_rows_equals_rows():
    model = tiny_model("mistral")
    prompts, chosen, rejected = example_lists()
    rows = pack_preference_examples(prompts, chosen, rejected, token_budget=24)
    with torch.no_grad():
        joined = packed_logprobs(model, PackedBatch.cat(list(rows)))
        separate = [packed_logprobs(model, row) for row in rows]
    torch.testing.assert_close(joined.chosen, torch.cat([s.chosen for s in separate]), atol=ATOL, rtol=0)
    torch.testing.assert_close(joined.rejected, torch.cat([s.rejected for s in separate]), atol=ATOL, rtol=0)
