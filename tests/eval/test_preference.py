"""Held-out preference accuracy (fastalign/eval/preference.py) on tiny random models, against
log-probs computed the plain way (one unpacked transformers forward per answer)."""

from __future__ import annotations

import pytest
import torch

from fastalign.eval import preference_accuracy
from fastalign.models import PolicyModel, packed_logprobs
from fastalign.packing import pack_preference_examples
from tests.models.tiny_models import example_lists, reference_answer_logp, tiny_model


def _rows():
    """The four examples over several packed rows (budget 24 tokens)."""
    rows = pack_preference_examples(*example_lists(), token_budget=24)
    assert len(rows) > 1
    return rows


@torch.no_grad()
def _answer_logps(model):
    """Per example (in input order): log π(C), log π(R), summed, unpacked."""
    prompts, chosen, rejected = example_lists()
    return (torch.stack([reference_answer_logp(model, p, c) for p, c in zip(prompts, chosen)]).double(),
            torch.stack([reference_answer_logp(model, p, r) for p, r in zip(prompts, rejected)]).double())


def _reference_fn(model):
    """A reference callback the way trainers give one: per row, log π_ref(C), log π_ref(R)
    of its examples (in the row's order)."""
    chosen, rejected = _answer_logps(model)

    def reference(row):
        return chosen[row.example_index].float(), rejected[row.example_index].float()

    return reference


def test_logp_accuracy_and_margin_without_a_reference():
    model = tiny_model("llama")
    chosen, rejected = _answer_logps(model)
    margins = chosen - rejected
    result = preference_accuracy(PolicyModel(model), _rows())
    assert set(result) == {"pairs", "logp_accuracy", "logp_margin"}
    assert result["pairs"] == 4.0
    assert result["logp_accuracy"] == float((margins > 0).double().mean())
    assert result["logp_margin"] == pytest.approx(float(margins.mean()), abs=1e-4)


def test_reward_accuracy_and_margin_with_a_reference():
    model, reference_model = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    chosen, rejected = _answer_logps(model)
    ref_chosen, ref_rejected = _answer_logps(reference_model)
    rewards = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    result = preference_accuracy(PolicyModel(model), _rows(), reference=_reference_fn(reference_model), beta=0.5)
    assert set(result) == {"pairs", "logp_accuracy", "logp_margin", "reward_accuracy", "reward_margin"}
    assert result["reward_accuracy"] == float((rewards > 0).double().mean())
    assert result["reward_margin"] == pytest.approx(float(rewards.mean()), abs=1e-4)
    # The logp numbers do not depend on the reference.
    assert result["logp_margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-4)


def test_the_policy_as_its_own_reference_has_zero_rewards():
    policy = PolicyModel(tiny_model("llama"))

    def reference(row):  # the policy's own packed log-probs: every implicit reward is exactly 0
        out = packed_logprobs(policy, row)
        return out.chosen, out.rejected

    result = preference_accuracy(policy, iter(_rows()), reference=reference, beta=3.0)
    assert result["reward_accuracy"] == 0.0  # a zero reward margin is not a win
    assert result["reward_margin"] == 0.0
    assert result["logp_accuracy"] > 0.0


def test_the_accuracy_sees_which_answer_is_preferred():
    """Swapping chosen and rejected turns each margin around: accuracy 1 - a, margin -m."""
    model = tiny_model("llama")
    prompts, chosen, rejected = example_lists()
    policy = PolicyModel(model)
    straight = preference_accuracy(policy, pack_preference_examples(prompts, chosen, rejected, token_budget=24))
    swapped = preference_accuracy(policy, pack_preference_examples(prompts, rejected, chosen, token_budget=24))
    assert 0.0 < straight["logp_accuracy"] < 1.0, straight  # the check below needs no ties at 0 or 1
    assert swapped["logp_accuracy"] == 1.0 - straight["logp_accuracy"]
    assert swapped["logp_margin"] == pytest.approx(-straight["logp_margin"], abs=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_runs_in_eval_mode_and_restores_the_mode(training):
    model = tiny_model("llama")
    policy = PolicyModel(model).train(training)
    modes = []

    def reference(row):
        modes.append(policy.training)
        zeros = torch.zeros(row.num_examples)
        return zeros, zeros

    preference_accuracy(policy, _rows(), reference=reference, device="cpu")
    assert modes and not any(modes)
    assert policy.training is training
    with pytest.raises(ValueError):
        preference_accuracy(policy, [])
    assert policy.training is training, "restored when the call fails too"


def test_bad_inputs_are_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="policy must be a PolicyModel, got LlamaForCausalLM"):
        preference_accuracy(model, _rows())
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        preference_accuracy(PolicyModel(model), _rows(), beta=0)
    with pytest.raises(ValueError, match="rows must hold at least one packed row"):
        preference_accuracy(PolicyModel(model), [])
