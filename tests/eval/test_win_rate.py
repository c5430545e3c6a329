"""Win rates (fastalign/eval/win_rate.py): the counting rules on scripted generations, then a
reward-judged win rate of a real SFT model against a random one."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from fastalign.app.recipes import load_model
from fastalign.data import make_preference_task, verify_score
from fastalign.eval import reward_win_rate, win_rate
from fastalign.rollout import Rollout
from fastalign.rollout.rewards import verifier_reward

# ``fastalign.eval.win_rate`` the attribute is the function; the module is looked up by name.
win_rate_module = importlib.import_module("fastalign.eval.win_rate")
PROMPTS = ["p0", "p1", "p2", "p3", "p4"]


def _scripted(monkeypatch):
    """Replace generation: a "model" answers each prompt from its own script; calls are logged."""
    calls = []

    def generate(model, tokenizer, prompts, **options):
        calls.append((model.name, tokenizer, list(prompts), options))
        completions = [model.answers[p] for p in prompts]
        return Rollout(list(prompts), completions, [[] for _ in prompts], [[] for _ in prompts], [[] for _ in prompts])

    monkeypatch.setattr(win_rate_module, "generate", generate)
    return calls


def _model(name, answers):
    return SimpleNamespace(name=name, answers=dict(zip(PROMPTS, answers)))


def test_win_rate_counts_wins_ties_and_losses(monkeypatch):
    calls = _scripted(monkeypatch)
    model = _model("model", ["right", "right", "wrong", "wrong", "right"])
    baseline = _model("baseline", ["right", "wrong", "right", "wrong", "wrong"])
    checked = []

    def verify(prompt, completion):
        checked.append((prompt, completion))
        return 1 if completion == "right" else 0  # any truthy value counts as correct

    result = win_rate(model, baseline, "tok", PROMPTS, verify, max_new_tokens=7, batch_size=3)
    # p1, p4: only the model is right (wins); p2: only the baseline (loss); p0, p3: ties.
    assert result == {"win_rate": (2 + 2 / 2) / 5, "wins": 2 / 5, "ties": 2 / 5, "losses": 1 / 5,
                      "accuracy": 3 / 5, "baseline_accuracy": 2 / 5}
    assert all(isinstance(value, float) for value in result.values())
    # Both models answer every prompt greedily, with the caller's options.
    assert calls == [("model", "tok", PROMPTS, {"max_new_tokens": 7, "batch_size": 3}),
                     ("baseline", "tok", PROMPTS, {"max_new_tokens": 7, "batch_size": 3})]
    assert checked[:5] == list(zip(PROMPTS, ["right", "right", "wrong", "wrong", "right"]))
    assert len(checked) == 10


def test_win_rate_of_identical_models_is_one_half(monkeypatch):
    _scripted(monkeypatch)
    model = _model("model", ["right", "wrong", "right", "wrong", "wrong"])
    result = win_rate(model, model, None, PROMPTS, lambda p, c: c == "right")
    assert result["win_rate"] == 0.5 and result["ties"] == 1.0 and result["wins"] == result["losses"] == 0.0
    assert result["accuracy"] == result["baseline_accuracy"] == 2 / 5


def test_win_rate_refuses_bad_inputs(monkeypatch):
    calls = _scripted(monkeypatch)
    model = _model("model", ["x"] * 5)
    with pytest.raises(ValueError, match="prompts must not be empty"):
        win_rate(model, model, None, [], lambda p, c: True)
    with pytest.raises(ValueError, match=r"verify must be a callable \(prompt, completion\) -> bool"):
        win_rate(model, model, None, PROMPTS, "not callable")
    assert calls == [], "nothing is generated before the inputs are checked"


def _rewarded(monkeypatch):
    _scripted(monkeypatch)
    model = _model("model", ["3", "1", "2.05", "5", "0"])
    baseline = _model("baseline", ["1", "1", "2", "4.5", "0.5"])
    seen = []

    def reward_fn(prompts, completions):
        seen.append((prompts, list(completions)))
        return [float(c) for c in completions]

    return model, baseline, reward_fn, seen


def test_reward_win_rate_with_a_tie_margin_and_subsets(monkeypatch):
    model, baseline, reward_fn, seen = _rewarded(monkeypatch)
    result = reward_win_rate(model, baseline, None, PROMPTS, reward_fn, subsets=["a", "a", "b", "b", "b"],
                             tie_margin=0.1)
    # p0 win (3 > 1.1), p1 tie (equal), p2 tie (2.05 within 0.1 of 2), p3 win, p4 loss (0.5 > 0.1).
    assert result == {"rm_win_rate": pytest.approx(3 / 5), "rm_reward": pytest.approx(11.05 / 5),
                      "rm_baseline_reward": pytest.approx(9 / 5),
                      "rm_win_rate/a": pytest.approx((1 + 0.5) / 2), "rm_win_rate/b": pytest.approx((0.5 + 1 + 0) / 3)}
    assert list(result) == ["rm_win_rate", "rm_reward", "rm_baseline_reward", "rm_win_rate/a", "rm_win_rate/b"]
    # The reward function scores the model's answers, then the baseline's, for the same prompts.
    assert seen == [(PROMPTS, ["3", "1", "2.05", "5", "0"]), (PROMPTS, ["1", "1", "2", "4.5", "0.5"])]
    assert all(isinstance(prompts, list) for prompts, _ in seen)


def test_reward_win_rate_without_a_margin_or_subsets(monkeypatch):
    model, baseline, reward_fn, _ = _rewarded(monkeypatch)
    result = reward_win_rate(model, baseline, None, tuple(PROMPTS), reward_fn)
    # Without the margin p2 (2.05 vs 2) is a win: 1 + 0.5 + 1 + 1 + 0.
    assert result == {"rm_win_rate": pytest.approx(3.5 / 5), "rm_reward": pytest.approx(2.21),
                      "rm_baseline_reward": pytest.approx(1.8)}
    swapped = reward_win_rate(baseline, model, None, PROMPTS, reward_fn)
    assert swapped["rm_win_rate"] == pytest.approx(1 - 3.5 / 5)


def test_reward_win_rate_refuses_bad_inputs(monkeypatch):
    model, baseline, reward_fn, seen = _rewarded(monkeypatch)
    with pytest.raises(ValueError, match="prompts must not be empty"):
        reward_win_rate(model, baseline, None, [], reward_fn)
    with pytest.raises(ValueError, match="subsets has 4 labels for 5 prompts"):
        reward_win_rate(model, baseline, None, PROMPTS, reward_fn, subsets=["a"] * 4)
    assert seen == []


# Moved from tests/train/test_rl_trainers.py: a real SFT model against a random one.
def test_reward_judged_win_rate_with_subsets(sft_run):
    prompts = list(make_preference_task(0, 24, seed=9)["test"]["prompt"])
    subsets = [p.split(":")[0] for p in prompts]  # "upper" / "reverse", like HH's helpful / harmless
    random_model, _ = load_model("tiny", seed=1)
    judged = reward_win_rate(sft_run["model"], random_model, sft_run["tokenizer"], prompts,
                             verifier_reward(verify_score), subsets=subsets, max_new_tokens=8)
    assert set(judged) >= {"rm_win_rate", "rm_reward", "rm_baseline_reward", "rm_win_rate/upper", "rm_win_rate/reverse"}
    assert judged["rm_win_rate"] > 0.7 and judged["rm_reward"] > judged["rm_baseline_reward"]
    with pytest.raises(ValueError, match="subsets has 1 labels for 24 prompts"):
        reward_win_rate(sft_run["model"], random_model, sft_run["tokenizer"], prompts, verifier_reward(verify_score),
                        subsets=["x"])
