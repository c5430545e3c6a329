"""Win rate of a model's generations against a baseline model's, judged by a verifier.

For each held-out prompt both models answer greedily; the verifier says which answers are
correct. A prompt is a win when only the model is right, a loss when only the baseline is,
a tie otherwise; ``win_rate = (wins + ties / 2) / prompts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from fastalign.rollout.generate import generate

Verifier = Callable[[str, str], bool]


def _greedy_answers(model, baseline, tokenizer, prompts, max_new_tokens: int, batch_size: int):
    """Greedy completions of ``prompts`` by the model and by the baseline."""
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    return (generate(model, tokenizer, prompts, **options).completions,
            generate(baseline, tokenizer, prompts, **options).completions)


def win_rate(
    model: nn.Module,
    baseline: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    verify: Verifier,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> dict[str, float]:
    """Returns ``win_rate``, ``wins``, ``ties``, ``losses``, ``accuracy`` (model) and
    ``baseline_accuracy`` — fractions of ``len(prompts)``."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not callable(verify):
        raise ValueError("verify must be a callable (prompt, completion) -> bool")
    ours, theirs = _greedy_answers(model, baseline, tokenizer, prompts, max_new_tokens, batch_size)
    correct = [bool(verify(p, c)) for p, c in zip(prompts, ours)]
    baseline_correct = [bool(verify(p, c)) for p, c in zip(prompts, theirs)]
    wins = sum(a and not b for a, b in zip(correct, baseline_correct))
    losses = sum(b and not a for a, b in zip(correct, baseline_correct))
    ties = len(prompts) - wins - losses
    n = float(len(prompts))
    return {
        "win_rate": (wins + ties / 2) / n, "wins": wins / n, "ties": ties / n, "losses": losses / n,
        "accuracy": sum(correct) / n, "baseline_accuracy": sum(baseline_correct) / n,
    }


def reward_win_rate(
    model: nn.Module,
    baseline: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable[[Sequence[str], Sequence[str]], list[float]],
    *,
    subsets: Sequence[str] | None = None,
    tie_margin: float = 0.0,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> dict[str, float]:
    """Win rate judged by a reward function (e.g. ``rollout.rewards.reward_model_reward``):
    per prompt both models answer greedily, a win is ``r(model) > r(baseline) + tie_margin``.

    ``subsets``: a label per prompt (e.g. Anthropic HH's "helpful-base" / "harmless-base");
    each subset is reported too, as ``win_rate/<subset>``.
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    if subsets is not None and len(subsets) != len(prompts):
        raise ValueError(f"subsets has {len(subsets)} labels for {len(prompts)} prompts")
    ours, theirs = _greedy_answers(model, baseline, tokenizer, prompts, max_new_tokens, batch_size)
    mine = reward_fn(list(prompts), ours)
    other = reward_fn(list(prompts), theirs)
    outcome = [1.0 if a > b + tie_margin else 0.0 if b > a + tie_margin else 0.5 for a, b in zip(mine, other)]
    result = {"rm_win_rate": sum(outcome) / len(outcome), "rm_reward": sum(mine) / len(mine),
              "rm_baseline_reward": sum(other) / len(other)}
    for name in sorted(set(subsets or ())):
        picked = [o for o, s in zip(outcome, subsets) if s == name]
        result[f"rm_win_rate/{name}"] = sum(picked) / len(picked)
    return result
