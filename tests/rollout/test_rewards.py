"""Reward functions for the RL trainers (fastalign/rollout/rewards.py): a verifier mapped to
rewards, and a trained reward model's scores checked against plain unpacked forwards."""

from __future__ import annotations

import pytest
import torch

from fastalign.app.recipes import load_model
from fastalign.data.encoding import RowEncoder
from fastalign.models import RewardModel
from fastalign.rollout.rewards import reward_model_reward, verifier_reward


def test_verifier_reward_maps_right_and_wrong():
    seen = []

    def verify(prompt, completion):
        seen.append((prompt, completion))
        return completion == prompt.upper()

    reward = verifier_reward(verify)
    assert reward(["ab", "cd", "ef"], ["AB", "cd", "EF"]) == [1.0, 0.0, 1.0]
    assert seen == [("ab", "AB"), ("cd", "cd"), ("ef", "EF")]
    custom = verifier_reward(verify, correct=2.0, wrong=-1.0)
    assert custom(("ab", "cd"), ("AB", "x")) == [2.0, -1.0]
    assert all(type(value) is float for value in custom(["ab"], ["AB"]))


def test_a_graded_verifier_is_mapped_linearly():
    scores = {"a": 0.0, "b": 0.25, "c": 1.0}
    reward = verifier_reward(lambda prompt, completion: scores[completion], correct=3.0, wrong=-1.0)
    # wrong + score * (correct - wrong)
    assert reward(["p"] * 3, ["a", "b", "c"]) == [-1.0, 0.0, 3.0]
    assert verifier_reward(lambda p, c: scores[c])(["p"], ["b"]) == [0.25]


def test_verifier_reward_refuses_bad_inputs():
    with pytest.raises(ValueError, match=r"verify must be a callable \(prompt, completion\) -> bool"):
        verifier_reward(None)
    reward = verifier_reward(lambda p, c: True)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        reward(["a", "b"], ["x"])


@pytest.fixture(scope="module")
def reward_setup():
    causal, tokenizer = load_model("tiny", seed=0)
    model = RewardModel.from_causal_lm(causal, seed=0, pad_token_id=tokenizer.pad_token_id, init_std=1.0).eval()
    return model, tokenizer


@torch.no_grad()
def _plain_score(model, ids: list[int]) -> float:
    """The sequence classifier's score of one unpadded sequence (at its last token)."""
    return float(model.model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_reward_model_scores_equal_unpacked_forwards(reward_setup):
    model, tokenizer = reward_setup
    prompts = ["upper: abc\n", "reverse: hello\n", "upper: xy\n", "upper: q\n"]
    completions = ["ABC", "olleh", "nope", ""]
    encoder = RowEncoder(tokenizer, boundary="separate", add_bos=False, add_eos=False)
    prompt_ids = encoder.prompts(prompts)
    eos = tokenizer.eos_token_id
    # Each answer is scored as the reward model was trained: prompt + answer + EOS.
    expected = [_plain_score(model, p + list(c.encode()) + [eos]) for p, c in zip(prompt_ids, completions)]
    for budget in (4096, 24):  # one row, or several rows: scores come back in input order
        scores = reward_model_reward(model, tokenizer, token_budget=budget)(prompts, completions)
        assert isinstance(scores, list) and len(scores) == 4
        assert scores == pytest.approx(expected, abs=1e-5), budget
    without_eos = [_plain_score(model, p + list(c.encode())) for p, c in zip(prompt_ids[:3], completions[:3])]
    assert all(abs(a - b) > 1e-3 for a, b in zip(without_eos, expected[:3])), "the EOS token matters"


def test_reward_model_reward_truncates_an_overlong_answer(reward_setup):
    model, tokenizer = reward_setup
    scores = reward_model_reward(model, tokenizer, token_budget=16)(["upper: a\n"], ["A" * 40])
    assert len(scores) == 1 and torch.isfinite(torch.tensor(scores)).all()


def test_reward_model_reward_refuses_bad_inputs(reward_setup):
    model, tokenizer = reward_setup
    causal, _ = load_model("tiny", seed=0)
    with pytest.raises(ValueError, match="reward_model must be a fastalign RewardModel"):
        reward_model_reward(causal, tokenizer)
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        reward_model_reward(model, tokenizer)(["a"], ["x", "y"])
