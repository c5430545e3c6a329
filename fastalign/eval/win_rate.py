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
    ours = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    theirs = generate(baseline, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [bool(verify(p, c)) for p, c in zip(prompts, ours.completions)]
    baseline_correct = [bool(verify(p, c)) for p, c in zip(prompts, theirs.completions)]
    wins = sum(a and not b for a, b in zip(correct, baseline_correct))
    losses = sum(b and not a for a, b in zip(correct, baseline_correct))
    ties = len(prompts) - wins - losses
    n = float(len(prompts))
    return {
        "win_rate": (wins + ties / 2) / n, "wins": wins / n, "ties": ties / n, "losses": losses / n,
        "accuracy": sum(correct) / n, "baseline_accuracy": sum(baseline_correct) / n,
    }
